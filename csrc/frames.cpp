#include <cstdint>

#include "episodes.h"
#include "rng.h"

// The eval formula must round exactly like Python's float arithmetic: CMakeLists.txt compiles
// with -ffp-contract=off so tick / 2 + tick * s is never fused into one FMA.

namespace taf {

void frame_indices(const int64_t* num_frames, const uint64_t* keys, int64_t num_videos, int64_t num_segments,
                   bool train, uint64_t seed, int64_t* out) {
  for (int64_t v = 0; v < num_videos; ++v) {
    const int64_t n = num_frames[v];
    int64_t* row = out + v * num_segments;
    if (train && n > num_segments) {
      const int64_t avg = n / num_segments;
      const uint64_t key = stream_key(seed, kSaltFrames, keys ? keys[v] : static_cast<uint64_t>(v));
      for (int64_t s = 0; s < num_segments; ++s) {
        row[s] = s * avg + static_cast<int64_t>(bounded(key, static_cast<uint64_t>(s), static_cast<uint64_t>(avg)));
      }
    } else {
      const double tick = static_cast<double>(n) / static_cast<double>(num_segments);
      for (int64_t s = 0; s < num_segments; ++s) {
        const double half = tick / 2.0;
        const double step = tick * static_cast<double>(s);
        row[s] = static_cast<int64_t>(half + step);
      }
    }
  }
}

void crop_offsets(const uint64_t* keys, int64_t count, int64_t resized, int64_t crop, bool train, uint64_t seed,
                  int64_t* out) {
  const int64_t slack = resized - crop;
  if (!train) {
    // Python's round((slack) / 2.0): halves go to the even neighbour.
    const int64_t half = slack / 2;
    const int64_t centre = (slack % 2 == 0) ? half : half + (half & 1);
    for (int64_t i = 0; i < 2 * count; ++i) out[i] = centre;
    return;
  }
  const uint64_t span = static_cast<uint64_t>(slack + 1);
  for (int64_t i = 0; i < count; ++i) {
    const uint64_t key = stream_key(seed, kSaltCrops, keys ? keys[i] : static_cast<uint64_t>(i));
    out[2 * i] = static_cast<int64_t>(bounded(key, 0, span));
    out[2 * i + 1] = static_cast<int64_t>(bounded(key, 1, span));
  }
}

}  // namespace taf
