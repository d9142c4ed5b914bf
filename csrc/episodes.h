// Episode sampling, frame-index sampling and crop offsets: the C++ core.
//
// Plain C++ on raw buffers: no Python objects, no allocation visible to the caller, no argument
// checks (bindings.cpp validates everything before calling in, with the GIL released).
#pragma once

#include <cstdint>

namespace taf {

// Episodes start .. start+count-1. Classes are given in CSR form: class c owns
// videos[offsets[c] .. offsets[c+1]). Writes classes [count, n_way], support
// [count, n_way, n_shot] and query [count, n_way, n_query] (row-major).
//
// Episode e uses k = stream_key(seed, kSaltEpisodes, e) and a partial Fisher-Yates shuffle:
//   classes: a = [0, num_classes); for j in 0..n_way-1: r = j + bounded(k, j, num_classes - j);
//            swap(a[j], a[r]); class j = a[j]
//   videos of class position c (D = n_shot + n_query, n = size of that class):
//            b = [0, n); for m in 0..D-1: r = m + bounded(k, n_way + c * D + m, n - m);
//            swap(b[m], b[r]); video m = videos[offsets[class] + b[m]]; the first n_shot are
//            support, the rest query.
void sample_episodes(const int64_t* offsets, const int64_t* videos, int64_t num_classes, int64_t n_way,
                     int64_t n_shot, int64_t n_query, uint64_t seed, uint64_t start, int64_t count,
                     int64_t* classes, int64_t* support, int64_t* query);

// TSN frame indices (docs/method.md §1.2) for num_videos videos, written to out [num_videos, num_segments].
// Train and n > T: avg = n / T; idx_s = s * avg + bounded(stream_key(seed, kSaltFrames, key), s, avg).
// Otherwise: tick = double(n) / T; idx_s = int(tick / 2 + tick * s) in IEEE double, like Python.
// key is keys[v], or v when keys is null.
void frame_indices(const int64_t* num_frames, const uint64_t* keys, int64_t num_videos, int64_t num_segments,
                   bool train, uint64_t seed, int64_t* out);

// (top, left) crop offsets for a square image of side `resized` cropped to `crop`, out [count, 2].
// Train: k = stream_key(seed, kSaltCrops, key); top = bounded(k, 0, span), left = bounded(k, 1, span),
// span = resized - crop + 1. Eval: both round((resized - crop) / 2) with ties to even, as
// torchvision's CenterCrop computes it through Python's round().
void crop_offsets(const uint64_t* keys, int64_t count, int64_t resized, int64_t crop, bool train, uint64_t seed,
                  int64_t* out);

}  // namespace taf
