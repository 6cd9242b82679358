// The pybind11 module petfast._C: one def per op. Arrays arrive as (pointer, dtype code, shape,
// element strides, device) tuples built by python/petfast/_arrays.py; the GIL is released while
// a kernel runs. std::invalid_argument surfaces in Python as ValueError.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <atomic>
#include <thread>

#include "petfast/ops.h"
#include "petfast/parallel.h"

namespace py = pybind11;

namespace petfast {

void resample(const Volume& src, const Volume& dst, const ResampleArgs& a, uintptr_t stream);
void bspline_prefilter(const Volume& src, const Volume& coef, uintptr_t stream);
void convolve_axis(const Volume& src, const Volume& dst, int axis, const std::vector<float>& taps, uintptr_t stream);
int64_t label(const Volume& src, const Volume& dst, int connectivity, const Volume& scratch, const Volume* image,
              const Volume* acc, const Volume* box, uintptr_t stream);
void component_stats(const Volume& labels, const Volume* image, int64_t count, const Volume& acc, const Volume& box,
                     uintptr_t stream);
void drop_components(const Volume& labels, const Volume& keep, const Volume& out);
void gather_tiles(const NdView& src, const NdView& dst, const TileOrigins& o, double pad, uintptr_t stream);
void accumulate_tiles(const NdView& tiles, const NdView& weight_map, const TileOrigins& o, const NdView& acc,
                      const NdView& weight, uintptr_t stream);
void finalize_tiles(const NdView& acc, const NdView& labels, uintptr_t stream);
void instance_norm_act(const NdView& x, const NdView* residual, const NdView& gamma, const NdView& beta,
                       const NdView& out, double eps, double slope, const NdView* stats, uintptr_t stream);
void upsample_concat(const NdView& rows, const NdView& skip, const NdView& out, const int64_t factor[3]);

namespace {
std::atomic<int> g_threads{int(std::max(1u, std::thread::hardware_concurrency()))};
}
int get_num_threads() { return g_threads.load(); }
void set_num_threads(int n) {
  require(n >= 1, "the number of threads must be at least 1");
  g_threads.store(n);
}

namespace {

NdView to_ndview(const py::tuple& t) {
  require(t.size() == 5, "internal: an array is (pointer, dtype, shape, strides, device)");
  NdView v;
  v.data = reinterpret_cast<void*>(t[0].cast<uintptr_t>());
  const int code = t[1].cast<int>();
  require(code >= 0 && code <= 6, "internal: unknown dtype code");
  v.dtype = static_cast<DType>(code);
  auto shape = t[2].cast<std::vector<int64_t>>();
  auto strides = t[3].cast<std::vector<int64_t>>();
  require(shape.size() == strides.size() && shape.size() <= 5, "internal: at most 5 dimensions");
  v.ndim = int(shape.size());
  for (int a = 0; a < v.ndim; ++a) {
    v.shape[a] = shape[a];
    v.strides[a] = strides[a];
  }
  v.device = t[4].cast<int>();
  return v;
}

// A 3-D volume: the same tuple, required to have three axes.
Volume to_volume(const py::tuple& t) {
  const NdView n = to_ndview(t);
  require(n.ndim == 3, "internal: volumes are 3-D");
  Volume v;
  v.data = n.data;
  v.dtype = n.dtype;
  for (int a = 0; a < 3; ++a) {
    v.shape[a] = n.shape[a];
    v.strides[a] = n.strides[a];
  }
  v.device = n.device;
  return v;
}

TileOrigins to_origins(const std::vector<std::vector<int64_t>>& origins) {
  require(origins.size() <= size_t(kMaxTiles), "internal: at most 128 tiles per call");
  TileOrigins o;
  o.count = int(origins.size());
  for (size_t b = 0; b < origins.size(); ++b) {
    require(origins[b].size() == 3, "internal: an origin has 3 coordinates");
    for (int a = 0; a < 3; ++a) o.at[b][a] = origins[b][a];
  }
  return o;
}

IndexMap to_map(const std::vector<double>& m) {
  require(m.size() == 12, "internal: the index map has 12 entries (3x4, row-major)");
  IndexMap out;
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 4; ++c) out.m[r][c] = m[r * 4 + c];
  return out;
}

}  // namespace
}  // namespace petfast

PYBIND11_MODULE(_C, m) {
  using namespace petfast;
  m.doc() = "petfast kernels (internal: use the petfast package)";
  m.def("cuda_built", []() {
#ifdef PETFAST_WITH_CUDA
    return true;
#else
    return false;
#endif
  });
  m.def("cuda_device_count", []() {
#ifdef PETFAST_WITH_CUDA
    return cuda_device_count();
#else
    return 0;
#endif
  });
  m.def("get_num_threads", &get_num_threads);
  m.def("set_num_threads", &set_num_threads);
  m.def(
      "resample",
      [](py::tuple src, py::tuple dst, std::vector<double> map, int order, double fill, uintptr_t stream) {
        Volume s = to_volume(src), d = to_volume(dst);
        ResampleArgs a;
        a.map = to_map(map);
        a.order = order;
        a.fill = fill;
        py::gil_scoped_release release;
        resample(s, d, a, stream);
      },
      py::arg("src"), py::arg("dst"), py::arg("map"), py::arg("order"), py::arg("fill"), py::arg("stream"));
  m.def(
      "bspline_prefilter",
      [](py::tuple src, py::tuple coef, uintptr_t stream) {
        Volume s = to_volume(src), c = to_volume(coef);
        py::gil_scoped_release release;
        bspline_prefilter(s, c, stream);
      },
      py::arg("src"), py::arg("coef"), py::arg("stream"));
  m.def(
      "label",
      [](py::tuple src, py::tuple dst, int connectivity, py::object scratch, uintptr_t stream, py::object image,
         py::object acc, py::object box) {
        Volume s = to_volume(src), d = to_volume(dst), c, i, a, b;
        const bool has_image = !image.is_none(), has_tables = !acc.is_none() && !box.is_none();
        if (!scratch.is_none()) c = to_volume(scratch.cast<py::tuple>());
        if (has_image) i = to_volume(image.cast<py::tuple>());
        if (has_tables) a = to_volume(acc.cast<py::tuple>()), b = to_volume(box.cast<py::tuple>());
        py::gil_scoped_release release;
        return label(s, d, connectivity, c, has_image ? &i : nullptr, has_tables ? &a : nullptr,
                     has_tables ? &b : nullptr, stream);
      },
      py::arg("src"), py::arg("dst"), py::arg("connectivity"), py::arg("scratch"), py::arg("stream"),
      py::arg("image") = py::none(), py::arg("acc") = py::none(), py::arg("box") = py::none(),
      "Labels src into dst; with acc and box (capacity + 1 rows), also the component statistics when the "
      "count fits them");
  m.def(
      "label_scratch_size",
      [](int64_t n0, int64_t n1, int64_t n2) {
        const int64_t shape[3] = {n0, n1, n2};
        return label_scratch_layout(shape).total;
      },
      "int32 entries of scratch the CUDA labeller needs for a mask of this shape");
  m.def(
      "component_stats",
      [](py::tuple labels, py::object image, int64_t count, py::tuple acc, py::tuple box, uintptr_t stream) {
        Volume l = to_volume(labels), a = to_volume(acc), b = to_volume(box), i;
        const bool has_image = !image.is_none();
        if (has_image) i = to_volume(image.cast<py::tuple>());
        py::gil_scoped_release release;
        component_stats(l, has_image ? &i : nullptr, count, a, b, stream);
      },
      py::arg("labels"), py::arg("image"), py::arg("count"), py::arg("acc"), py::arg("box"), py::arg("stream"));
  m.def(
      "extremes",
      [](py::tuple volume) {
        Volume v = to_volume(volume);
        require(!v.on_cuda(), "internal: extremes runs on the CPU");
        require(v.size() > 0, "internal: extremes of an empty volume");
        double lo = 0, hi = 0;
        {
          py::gil_scoped_release release;
          extremes_cpu(v, &lo, &hi);
        }
        return py::make_tuple(lo, hi);
      },
      py::arg("volume"), "(min, max) of a 3-D host volume in one multithreaded pass (NaN, NaN if it holds a NaN)");
  m.def(
      "binary_mask",
      [](py::tuple src, py::tuple dst) {
        Volume s = to_volume(src), d = to_volume(dst);
        require(!s.on_cuda() && !d.on_cuda(), "internal: binary_mask runs on the CPU");
        require(d.dtype == DType::UInt8, "internal: binary_mask writes uint8");
        for (int a = 0; a < 3; ++a) require(s.shape[a] == d.shape[a], "internal: binary_mask shapes differ");
        py::gil_scoped_release release;
        return binary_mask_cpu(s, d);
      },
      py::arg("src"), py::arg("dst"),
      "dst = src != 0 (uint8) in one multithreaded pass; returns whether a value was neither 0 nor 1 (CPU)");
  m.def(
      "drop_components",
      [](py::tuple labels, py::tuple keep, py::tuple out) {
        Volume l = to_volume(labels), k = to_volume(keep), o = to_volume(out);
        py::gil_scoped_release release;
        drop_components(l, k, o);
      },
      py::arg("labels"), py::arg("keep"), py::arg("out"),
      "out[v] = 0 where labels[v] names a component whose keep entry is 0 (CPU)");
  m.def(
      "gather_tiles",
      [](py::tuple src, py::tuple dst, std::vector<std::vector<int64_t>> origins, double pad, uintptr_t stream) {
        NdView s = to_ndview(src), d = to_ndview(dst);
        TileOrigins o = to_origins(origins);
        py::gil_scoped_release release;
        gather_tiles(s, d, o, pad, stream);
      },
      py::arg("src"), py::arg("dst"), py::arg("origins"), py::arg("pad"), py::arg("stream"));
  m.def(
      "accumulate_tiles",
      [](py::tuple tiles, py::tuple weight_map, std::vector<std::vector<int64_t>> origins, py::tuple acc,
         py::tuple weight, uintptr_t stream) {
        NdView t = to_ndview(tiles), g = to_ndview(weight_map), a = to_ndview(acc), w = to_ndview(weight);
        TileOrigins o = to_origins(origins);
        py::gil_scoped_release release;
        accumulate_tiles(t, g, o, a, w, stream);
      },
      py::arg("tiles"), py::arg("weight_map"), py::arg("origins"), py::arg("acc"), py::arg("weight"), py::arg("stream"));
  m.def(
      "finalize_tiles",
      [](py::tuple acc, py::tuple labels, uintptr_t stream) {
        NdView a = to_ndview(acc), l = to_ndview(labels);
        py::gil_scoped_release release;
        finalize_tiles(a, l, stream);
      },
      py::arg("acc"), py::arg("labels"), py::arg("stream"));
  m.def(
      "instance_norm_act",
      [](py::tuple x, py::object residual, py::tuple gamma, py::tuple beta, py::tuple out, double eps, double slope,
         py::object stats, uintptr_t stream) {
        NdView xv = to_ndview(x), g = to_ndview(gamma), b = to_ndview(beta), o = to_ndview(out), r, st;
        if (!residual.is_none()) r = to_ndview(residual.cast<py::tuple>());
        if (!stats.is_none()) st = to_ndview(stats.cast<py::tuple>());
        py::gil_scoped_release release;
        instance_norm_act(xv, residual.is_none() ? nullptr : &r, g, b, o, eps, slope, stats.is_none() ? nullptr : &st,
                          stream);
      },
      py::arg("x"), py::arg("residual"), py::arg("gamma"), py::arg("beta"), py::arg("out"), py::arg("eps"),
      py::arg("slope"), py::arg("stats"), py::arg("stream"));
  m.def(
      "upsample_concat",
      [](py::tuple rows, py::tuple skip, py::tuple out, std::array<int64_t, 3> factor) {
        NdView r = to_ndview(rows), s = to_ndview(skip), o = to_ndview(out);
        py::gil_scoped_release release;
        upsample_concat(r, s, o, factor.data());
      },
      py::arg("rows"), py::arg("skip"), py::arg("out"), py::arg("factor"));
  m.def(
      "convolve_axis",
      [](py::tuple src, py::tuple dst, int axis, std::vector<float> taps, uintptr_t stream) {
        Volume s = to_volume(src), d = to_volume(dst);
        py::gil_scoped_release release;
        convolve_axis(s, d, axis, taps, stream);
      },
      py::arg("src"), py::arg("dst"), py::arg("axis"), py::arg("taps"), py::arg("stream"));
}
