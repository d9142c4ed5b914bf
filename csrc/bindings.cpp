// pybind11 bindings for the episode core: the only file that knows Python.
//
// Every argument is checked here, before the GIL is released and the core (episodes.h) runs
// on raw buffers; errors name the argument and the value. Inputs are numpy arrays of an exact
// dtype (no silent casts) and outputs are new int64 numpy arrays.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <limits>
#include <string>

#include "episodes.h"
#include "rng.h"

namespace py = pybind11;

namespace {

constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();
constexpr int64_t kMaxRange = static_cast<int64_t>(taf::kMaxRange);

std::string repr_of(py::handle obj) { return py::repr(obj).cast<std::string>(); }

std::string type_name(py::handle obj) { return py::type::of(obj).attr("__qualname__").cast<std::string>(); }

// An int (Python or numpy integer, not bool) in [lo, hi].
int64_t to_int(py::handle obj, const char* name, int64_t lo, int64_t hi) {
  if (PyBool_Check(obj.ptr()) || !PyIndex_Check(obj.ptr())) {
    throw py::type_error(std::string(name) + " must be an int, got " + type_name(obj) + " " + repr_of(obj));
  }
  auto value = py::reinterpret_steal<py::object>(PyNumber_Index(obj.ptr()));
  if (!value) throw py::error_already_set();
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(value.ptr(), &overflow);
  if (v == -1 && PyErr_Occurred()) throw py::error_already_set();
  if (overflow != 0 || v < lo || v > hi) {
    throw py::value_error(std::string(name) + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                          "], got " + repr_of(obj));
  }
  return static_cast<int64_t>(v);
}

// An int (not bool) in [0, 2**64).
uint64_t to_u64(py::handle obj, const char* name) {
  if (PyBool_Check(obj.ptr()) || !PyIndex_Check(obj.ptr())) {
    throw py::type_error(std::string(name) + " must be an int, got " + type_name(obj) + " " + repr_of(obj));
  }
  auto value = py::reinterpret_steal<py::object>(PyNumber_Index(obj.ptr()));
  if (!value) throw py::error_already_set();
  const unsigned long long v = PyLong_AsUnsignedLongLong(value.ptr());
  if (v == static_cast<unsigned long long>(-1) && PyErr_Occurred()) {
    PyErr_Clear();
    throw py::value_error(std::string(name) + " must be in [0, 2**64), got " + repr_of(obj));
  }
  return static_cast<uint64_t>(v);
}

bool to_bool(py::handle obj, const char* name) {
  if (!PyBool_Check(obj.ptr())) {
    throw py::type_error(std::string(name) + " must be a bool, got " + type_name(obj) + " " + repr_of(obj));
  }
  return obj.ptr() == Py_True;
}

// A 1-D, C-contiguous numpy array of exactly dtype T, of the given length (-1: any).
template <typename T>
py::array_t<T, py::array::c_style> to_array(py::handle obj, const char* name, py::ssize_t length = -1) {
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error(std::string(name) + " must be a numpy array, got " + type_name(obj));
  }
  auto arr = py::reinterpret_borrow<py::array>(obj);
  if (!py::isinstance<py::array_t<T, py::array::c_style>>(obj)) {
    throw py::type_error(std::string(name) + " must be a C-contiguous " + repr_of(py::dtype::of<T>()) +
                         " array, got " + repr_of(arr.dtype()) +
                         ((arr.flags() & py::array::c_style) ? "" : " (not C-contiguous)"));
  }
  if (arr.ndim() != 1) {
    throw py::value_error(std::string(name) + " must be 1-D, got shape " + repr_of(arr.attr("shape")));
  }
  if (length >= 0 && arr.shape(0) != length) {
    throw py::value_error(std::string(name) + " must have length " + std::to_string(length) + ", got " +
                          std::to_string(arr.shape(0)));
  }
  return py::reinterpret_borrow<py::array_t<T, py::array::c_style>>(obj);
}

py::tuple sample_episodes(py::handle offsets_obj, py::handle videos_obj, py::handle n_way_obj, py::handle n_shot_obj,
                          py::handle n_query_obj, py::handle seed_obj, py::handle start_obj, py::handle count_obj) {
  auto offsets = to_array<int64_t>(offsets_obj, "offsets");
  auto videos = to_array<int64_t>(videos_obj, "videos");
  const int64_t num_classes = static_cast<int64_t>(offsets.shape(0)) - 1;
  if (num_classes < 1) throw py::value_error("offsets must hold at least 2 entries (one class), got " +
                                             std::to_string(offsets.shape(0)));
  const int64_t* off = offsets.data();
  if (off[0] != 0) throw py::value_error("offsets[0] must be 0, got " + std::to_string(off[0]));
  for (int64_t c = 0; c < num_classes; ++c) {
    if (off[c + 1] < off[c]) {
      throw py::value_error("offsets must be non-decreasing, got offsets[" + std::to_string(c + 1) +
                            "] = " + std::to_string(off[c + 1]) + " < offsets[" + std::to_string(c) +
                            "] = " + std::to_string(off[c]));
    }
  }
  if (off[num_classes] != static_cast<int64_t>(videos.shape(0))) {
    throw py::value_error("offsets[-1] must equal len(videos) = " + std::to_string(videos.shape(0)) + ", got " +
                          std::to_string(off[num_classes]));
  }
  const int64_t n_way = to_int(n_way_obj, "n_way", 1, num_classes);
  const int64_t n_shot = to_int(n_shot_obj, "n_shot", 1, kMaxRange);
  const int64_t n_query = to_int(n_query_obj, "n_query", 1, kMaxRange - n_shot);
  const int64_t per_class = n_shot + n_query;
  if (n_way > kMaxRange / (1 + per_class)) {
    throw py::value_error("n_way * (1 + n_shot + n_query) must stay below 2**31, got n_way = " +
                          std::to_string(n_way) + ", n_shot + n_query = " + std::to_string(per_class));
  }
  std::string too_small;
  int64_t num_too_small = 0;
  for (int64_t c = 0; c < num_classes; ++c) {
    const int64_t size = off[c + 1] - off[c];
    if (size > kMaxRange) {
      throw py::value_error("class " + std::to_string(c) + " has " + std::to_string(size) +
                            " videos, more than the supported " + std::to_string(kMaxRange));
    }
    if (size < per_class) {
      if (num_too_small < 20) {
        too_small += (num_too_small ? ", class " : "class ") + std::to_string(c) + " has " + std::to_string(size);
      }
      ++num_too_small;
    }
  }
  if (num_too_small > 0) {
    if (num_too_small > 20) too_small += ", ... (" + std::to_string(num_too_small) + " classes in all)";
    throw py::value_error("every class needs at least n_shot + n_query = " + std::to_string(per_class) +
                          " videos: " + too_small);
  }
  const uint64_t seed = to_u64(seed_obj, "seed");
  const int64_t start = to_int(start_obj, "start", 0, kInt64Max);
  const int64_t count = to_int(count_obj, "count", 0, kInt64Max - start);

  py::array_t<int64_t> classes({count, n_way});
  py::array_t<int64_t> support({count, n_way, n_shot});
  py::array_t<int64_t> query({count, n_way, n_query});
  int64_t* classes_out = classes.mutable_data();
  int64_t* support_out = support.mutable_data();
  int64_t* query_out = query.mutable_data();
  const int64_t* video_data = videos.data();
  {
    py::gil_scoped_release release;
    taf::sample_episodes(off, video_data, num_classes, n_way, n_shot, n_query, seed, static_cast<uint64_t>(start),
                         count, classes_out, support_out, query_out);
  }
  return py::make_tuple(classes, support, query);
}

py::array_t<int64_t> frame_indices(py::handle num_frames_obj, py::handle num_segments_obj, py::handle train_obj,
                                   py::handle seed_obj, py::handle keys_obj) {
  auto num_frames = to_array<int64_t>(num_frames_obj, "num_frames");
  const int64_t num_videos = static_cast<int64_t>(num_frames.shape(0));
  const int64_t num_segments = to_int(num_segments_obj, "num_segments", 1, kMaxRange);
  const bool train = to_bool(train_obj, "train");
  const uint64_t seed = to_u64(seed_obj, "seed");
  const int64_t* frames = num_frames.data();
  for (int64_t v = 0; v < num_videos; ++v) {
    if (frames[v] < 1 || frames[v] > kMaxRange) {
      throw py::value_error("num_frames[" + std::to_string(v) + "] must be in [1, " + std::to_string(kMaxRange) +
                            "], got " + std::to_string(frames[v]));
    }
  }
  py::array_t<uint64_t, py::array::c_style> keys;
  const uint64_t* key_data = nullptr;
  if (!keys_obj.is_none()) {
    keys = to_array<uint64_t>(keys_obj, "keys", num_videos);
    key_data = keys.data();
  }
  py::array_t<int64_t> out({num_videos, num_segments});
  int64_t* out_data = out.mutable_data();
  {
    py::gil_scoped_release release;
    taf::frame_indices(frames, key_data, num_videos, num_segments, train, seed, out_data);
  }
  return out;
}

py::array_t<int64_t> crop_offsets(py::handle count_obj, py::handle resized_obj, py::handle crop_obj,
                                  py::handle train_obj, py::handle seed_obj, py::handle keys_obj) {
  const int64_t count = to_int(count_obj, "count", 0, kInt64Max / 2);
  const int64_t resized = to_int(resized_obj, "resized", 1, kMaxRange - 1);
  const int64_t crop = to_int(crop_obj, "crop", 1, resized);
  const bool train = to_bool(train_obj, "train");
  const uint64_t seed = to_u64(seed_obj, "seed");
  py::array_t<uint64_t, py::array::c_style> keys;
  const uint64_t* key_data = nullptr;
  if (!keys_obj.is_none()) {
    keys = to_array<uint64_t>(keys_obj, "keys", count);
    key_data = keys.data();
  }
  py::array_t<int64_t> out({count, int64_t{2}});
  int64_t* out_data = out.mutable_data();
  {
    py::gil_scoped_release release;
    taf::crop_offsets(key_data, count, resized, crop, train, seed, out_data);
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_episodes, m) {
  m.doc() =
      "C++ core of taskadapter_fast.data.sampler: counter-based episode sampling, TSN frame indices and "
      "crop offsets. Use the wrappers in taskadapter_fast.data; their Python twin defines the same algorithm.";
  m.def("sample_episodes", &sample_episodes, py::arg("offsets"), py::arg("videos"), py::arg("n_way"),
        py::arg("n_shot"), py::arg("n_query"), py::arg("seed"), py::arg("start"), py::arg("count"),
        "Episodes start..start+count-1 from classes in CSR form (int64 offsets [N+1], int64 videos [M]) -> "
        "(classes [count, n_way], support [count, n_way, n_shot], query [count, n_way, n_query]), int64.");
  m.def("frame_indices", &frame_indices, py::arg("num_frames"), py::arg("num_segments"), py::arg("train"),
        py::arg("seed"), py::arg("keys"),
        "TSN frame indices: int64 num_frames [V], optional uint64 keys [V] -> int64 [V, num_segments].");
  m.def("crop_offsets", &crop_offsets, py::arg("count"), py::arg("resized"), py::arg("crop"), py::arg("train"),
        py::arg("seed"), py::arg("keys"),
        "(top, left) crop offsets -> int64 [count, 2]; optional uint64 keys [count].");
}
