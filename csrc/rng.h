// Counter-based random numbers for the episode sampler (no state, no Python).
//
// Every random number is a pure function of (seed, stream salt, key, slot, attempt), so any
// worker or rank can recompute any draw on its own. The Python twin in
// taskadapter_fast/data/sampler.py implements the same functions bit for bit; change both or
// neither.
//
//   mix64(z)                 splitmix64's finaliser (Steele, Lea, Flood 2014)
//   stream_key(seed, salt, key) = mix64(mix64(seed ^ salt) + key * G)            (mod 2^64)
//   word(k, slot, attempt)      = mix64(k + G * (1 + slot + attempt * 2^32))     (mod 2^64)
//   bounded(k, slot, range)     = Lemire's unbiased multiply-shift on 32 bits: x = word >> 32,
//                                 m = x * range; accept when (m mod 2^32) >= (2^32 - range) % range,
//                                 else retry with attempt + 1; result m >> 32, uniform in [0, range).
#pragma once

#include <cstdint>

namespace taf {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ULL;
// ASCII tags keep the three streams apart for the same seed and key.
constexpr uint64_t kSaltEpisodes = 0x5441462D45504953ULL;  // "TAF-EPIS"
constexpr uint64_t kSaltFrames = 0x5441462D4652414DULL;    // "TAF-FRAM"
constexpr uint64_t kSaltCrops = 0x5441462D43524F50ULL;     // "TAF-CROP"
// Largest range bounded() accepts (32-bit draws); bindings.cpp refuses anything larger.
constexpr uint64_t kMaxRange = 0x7FFFFFFFULL;

inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

inline uint64_t stream_key(uint64_t seed, uint64_t salt, uint64_t key) {
  return mix64(mix64(seed ^ salt) + key * kGolden);
}

inline uint64_t word(uint64_t key, uint64_t slot, uint64_t attempt) {
  return mix64(key + kGolden * (1 + slot + (attempt << 32)));
}

// Uniform integer in [0, range), 1 <= range <= kMaxRange.
inline uint64_t bounded(uint64_t key, uint64_t slot, uint64_t range) {
  for (uint64_t attempt = 0;; ++attempt) {
    const uint64_t m = (word(key, slot, attempt) >> 32) * range;
    const uint64_t low = m & 0xFFFFFFFFULL;
    // The threshold is below range, so the modulo is only needed when low < range.
    if (low < range && low < ((uint64_t{1} << 32) - range) % range) continue;
    return m >> 32;
  }
}

}  // namespace taf
