#include "episodes.h"

#include <algorithm>
#include <vector>

#include "rng.h"

namespace taf {
namespace {

// The first `draws` elements of a Fisher-Yates shuffle of [0, n), stored sparsely: only the
// positions a swap moved are remembered (pos[j] now holds val[j]; the newest entry wins), so
// the cost is O(draws^2) whatever n is, and the output equals the dense shuffle's.
void partial_shuffle(uint64_t key, uint64_t slot_base, uint64_t n, int64_t draws, uint64_t* out, uint64_t* pos,
                     uint64_t* val) {
  for (int64_t m = 0; m < draws; ++m) {
    const uint64_t um = static_cast<uint64_t>(m);
    const uint64_t r = um + bounded(key, slot_base + um, n - um);
    uint64_t at_r = r;
    uint64_t at_m = um;
    bool found_r = false;
    bool found_m = false;
    for (int64_t j = m - 1; j >= 0 && !(found_r && found_m); --j) {
      if (!found_r && pos[j] == r) {
        at_r = val[j];
        found_r = true;
      }
      if (!found_m && pos[j] == um) {
        at_m = val[j];
        found_m = true;
      }
    }
    out[m] = at_r;  // a[m] after the swap; position m is never read again
    pos[m] = r;
    val[m] = at_m;
  }
}

}  // namespace

void sample_episodes(const int64_t* offsets, const int64_t* videos, int64_t num_classes, int64_t n_way,
                     int64_t n_shot, int64_t n_query, uint64_t seed, uint64_t start, int64_t count,
                     int64_t* classes, int64_t* support, int64_t* query) {
  const int64_t per_class = n_shot + n_query;
  const size_t scratch = static_cast<size_t>(std::max(n_way, per_class));
  std::vector<uint64_t> drawn(scratch), pos(scratch), val(scratch);
  for (int64_t e = 0; e < count; ++e) {
    const uint64_t key = stream_key(seed, kSaltEpisodes, start + static_cast<uint64_t>(e));
    partial_shuffle(key, 0, static_cast<uint64_t>(num_classes), n_way, drawn.data(), pos.data(), val.data());
    int64_t* episode_classes = classes + e * n_way;
    for (int64_t c = 0; c < n_way; ++c) episode_classes[c] = static_cast<int64_t>(drawn[c]);
    for (int64_t c = 0; c < n_way; ++c) {
      const int64_t cls = episode_classes[c];
      const int64_t first = offsets[cls];
      const uint64_t size = static_cast<uint64_t>(offsets[cls + 1] - first);
      const uint64_t slot_base = static_cast<uint64_t>(n_way + c * per_class);
      partial_shuffle(key, slot_base, size, per_class, drawn.data(), pos.data(), val.data());
      int64_t* shots = support + (e * n_way + c) * n_shot;
      int64_t* queries = query + (e * n_way + c) * n_query;
      for (int64_t m = 0; m < n_shot; ++m) shots[m] = videos[first + static_cast<int64_t>(drawn[m])];
      for (int64_t m = 0; m < n_query; ++m) queries[m] = videos[first + static_cast<int64_t>(drawn[n_shot + m])];
    }
  }
}

}  // namespace taf
