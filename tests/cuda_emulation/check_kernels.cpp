// petfast's CUDA kernels (labeller, tiles, component statistics, fused instance norm, B-spline
// prefilter and axis convolution, resampling), compiled for the host against the emulated runtime
// in this folder, against their CPU twins on random cases. Exit status 0 when every case agrees.
//   check_kernels CASES SEED
//   check_kernels atomics      (the statistics' atomics on one address, on one large component)
#include <cuda_runtime.h>

#include <cstdio>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "petfast/half.h"
#include "petfast/ops.h"

namespace petfast {
int get_num_threads() { return 2; }
}  // namespace petfast

using namespace petfast;

namespace {

std::mt19937_64 rng;
int64_t ri(int64_t a, int64_t b) { return std::uniform_int_distribution<int64_t>(a, b)(rng); }
int failures = 0;

void fail(const char* what, int iteration, size_t index) {
  ++failures;
  std::printf("%s: case %d differs from the CPU twin at element %zu\n", what, iteration, index);
}

// a and b equal within `tol` relative to the larger magnitude (at least `floor`; tol 0: exactly),
// NaNs alike; the first difference is reported.
template <typename T>
bool agree(const char* what, int iteration, const std::vector<T>& a, const std::vector<T>& b, double tol = 0,
           double floor = 1) {
  for (size_t i = 0; i < a.size(); ++i) {
    const double x = double(a[i]), y = double(b[i]), scale = std::max(floor, std::max(std::fabs(x), std::fabs(y)));
    if (!(x == y || (x != x && y != y) || std::fabs(x - y) <= tol * scale)) {
      fail(what, iteration, i);
      std::printf("  %.17g vs %.17g\n", x, y);
      return false;
    }
  }
  return true;
}

Volume volume(void* p, DType t, const int64_t* shape, bool fortran, int device) {
  Volume v;
  v.data = p, v.dtype = t, v.device = device;
  for (int a = 0; a < 3; ++a) v.shape[a] = shape[a];
  if (fortran) {
    v.strides[0] = 1, v.strides[1] = shape[0], v.strides[2] = shape[0] * shape[1];
  } else {
    v.strides[2] = 1, v.strides[1] = shape[2], v.strides[0] = shape[1] * shape[2];
  }
  return v;
}

NdView view(void* p, DType t, std::vector<int64_t> shape, int device) {
  NdView v;
  v.data = p, v.dtype = t, v.device = device, v.ndim = int(shape.size());
  int64_t stride = 1;
  for (int a = v.ndim - 1; a >= 0; --a) {
    v.shape[a] = shape[a];
    v.strides[a] = stride;
    stride *= shape[a];
  }
  return v;
}

// Statistics gathered while labelling (it % 5: none, without an image, with a float32 image holding
// a NaN now and then, with an int16 image, with tables too small for the count), by both twins,
// against component_stats_cpu on the CPU twin's labels.
void check_label_stats(int it, const Volume& src_cpu, const int64_t* shape, int connectivity,
                       const std::vector<int32_t>& labels, int64_t count, const Volume& src_gpu, const Volume& scratch) {
  const int kind = it % 5;
  if (kind == 0) return;
  const int64_t n = shape[0] * shape[1] * shape[2];
  std::vector<float> imf(n);
  std::vector<int16_t> imi(n);
  for (int64_t v = 0; v < n; ++v) imf[v] = float(ri(-500, 500)) / 3.f, imi[v] = int16_t(ri(-1000, 1000));
  if (it % 7 == 3) imf[ri(0, n - 1)] = NAN;
  const Volume image_cpu = kind == 3 ? volume(imi.data(), DType::Int16, shape, false, -1)
                                     : volume(imf.data(), DType::Float32, shape, false, -1);
  Volume image_gpu = image_cpu;
  image_gpu.device = 0;
  const bool with_image = kind >= 2;
  const int64_t capacity = kind == 4 ? std::max<int64_t>(count - 1, 0) : count + ri(0, 3);
  std::vector<double> want_acc((count + 1) * kStatsColumns);
  std::vector<int32_t> want_box((count + 1) * 6);
  component_stats_cpu(volume(const_cast<int32_t*>(labels.data()), DType::Int32, shape, false, -1),
                      with_image ? &image_cpu : nullptr, count, want_acc.data(), want_box.data());
  const int order[3] = {0, 1, 2};
  for (int device : {-1, 0}) {
    const char* what = device < 0 ? "label_cpu statistics" : "label_cuda statistics";
    std::vector<double> acc((capacity + 1) * kStatsColumns, 77.0);
    std::vector<int32_t> box((capacity + 1) * 6, 77), out(n, 0);
    const LabelStats stats{with_image ? (device < 0 ? &image_cpu : &image_gpu) : nullptr, acc.data(), box.data(), capacity};
    const Volume dst = volume(out.data(), DType::Int32, shape, false, device);
    const int64_t got = device < 0 ? label_cpu(src_cpu, dst, connectivity, order, &stats)
                                   : label_cuda(src_gpu, dst, connectivity, scratch, &stats, 0);
    if (got != count || !agree(what, it, labels, out)) continue;
    if (count > capacity) {  // the tables are not the caller's to read then; the CPU twin leaves them
      if (device < 0) agree("label_cpu statistics left alone", it, std::vector<double>(acc.size(), 77.0), acc);
      continue;
    }
    acc.resize(want_acc.size());
    box.resize(want_box.size());
    agree(what, it, want_acc, acc, 1e-9, 1000);
    agree(what, it, want_box, box);
  }
}

// Sparse, dense, 2x2x2-blocky (the block path) and multi-label masks, 0/1 and 0/7, uint8, int16 and
// float32, 6/18/26-connectivity, odd and even sizes, labels 8-byte aligned and not; now and then a
// volume over kLabelFlagsPerScanBlock voxels, whose start flags span two scan blocks.
void check_label(int it) {
  const bool large = it % 15 == 7;
  const int64_t shape[3] = {large ? ri(36, 40) : ri(1, 9), large ? ri(62, 70) : ri(1, 13), large ? ri(62, 70) : ri(1, 40)};
  const int64_t n = shape[0] * shape[1] * shape[2];
  const int connectivity = it % 3 == 0 ? 6 : (it % 3 == 1 ? 18 : 26), kind = it % 4;
  std::vector<uint8_t> mask(n);
  std::bernoulli_distribution on(kind == 0 ? 0.08 : 0.5);
  for (auto& v : mask) v = on(rng);
  if (kind == 2 && (it / 4) % 2)  // label values that differ between 2x2x2 blocks
    for (auto& v : mask) v = v ? uint8_t(ri(1, 3)) : 0;
  if (kind == 2)
    for (int64_t i = 0; i < shape[0]; ++i)
      for (int64_t j = 0; j < shape[1]; ++j)
        for (int64_t k = 0; k < shape[2]; ++k)
          mask[(i * shape[1] + j) * shape[2] + k] = mask[((i & ~1) * shape[1] + (j & ~1)) * shape[2] + (k & ~1)];
  if (kind == 3)
    for (auto& v : mask) v = v ? uint8_t(ri(1, 3)) : 0;
  if (it % 8 == 6)  // one value, but not 1: the labeller compares neighbours' values then
    for (auto& v : mask) v *= 7;
  std::vector<int32_t> cpu(n, 0), gpu_buffer(n + 1, -1);
  int32_t* gpu_out = gpu_buffer.data() + (it / 3) % 2;
  const int order[3] = {0, 1, 2};
  // Now and then the mask as int16 or float32: the kernels that read it are templates on its type.
  std::vector<int16_t> as_int16(mask.begin(), mask.end());
  std::vector<float> as_float(mask.begin(), mask.end());
  const DType type = (it / 3) % 5 == 3 ? DType::Int16 : ((it / 3) % 5 == 4 ? DType::Float32 : DType::UInt8);
  void* data = type == DType::Int16 ? static_cast<void*>(as_int16.data())
               : type == DType::Float32 ? static_cast<void*>(as_float.data()) : mask.data();
  const Volume src_cpu = volume(data, type, shape, false, -1);
  const int64_t count_cpu = label_cpu(src_cpu, volume(cpu.data(), DType::Int32, shape, false, -1), connectivity, order,
                                      nullptr);
  std::vector<int32_t> scratch(label_scratch_layout(shape).total, 12345);  // the kernels must not need it zeroed
  const int64_t flat[3] = {int64_t(scratch.size()), 1, 1};
  const Volume src_gpu = volume(data, type, shape, false, 0),
               scratch_gpu = volume(scratch.data(), DType::Int32, flat, false, 0);
  const int64_t count_gpu = label_cuda(src_gpu, volume(gpu_out, DType::Int32, shape, false, 0), connectivity,
                                       scratch_gpu, nullptr, 0);
  if (count_cpu != count_gpu) fail("label count", it, 0);
  if (agree("label", it, cpu, std::vector<int32_t>(gpu_out, gpu_out + n)))
    check_label_stats(it, src_cpu, shape, connectivity, cpu, count_cpu, src_gpu, scratch_gpu);
}

// Tiles partly outside the image (gather), inside it (accumulate), then the argmax.
void check_tiles(int it) {
  const int64_t C = ri(1, 3), D = ri(1, 10), H = ri(1, 20), W = ri(1, 90);
  const int64_t d = ri(1, 6), h = ri(1, 10), w = ri(1, 70), B = ri(0, 4);
  std::vector<float> src(C * D * H * W);
  for (auto& v : src) v = float(ri(-1000, 1000)) / 7.f;
  TileOrigins o;
  o.count = int(B);
  for (int b = 0; b < B; ++b) o.at[b][0] = ri(-d, D), o.at[b][1] = ri(-h, H), o.at[b][2] = ri(-w, W);
  std::vector<float> tiles_cpu(B * C * d * h * w, -7.f), tiles_gpu = tiles_cpu;
  gather_tiles_cpu(view(src.data(), DType::Float32, {C, D, H, W}, -1),
                   view(tiles_cpu.data(), DType::Float32, {B, C, d, h, w}, -1), o, 0.5);
  gather_tiles_cuda(view(src.data(), DType::Float32, {C, D, H, W}, 0),
                    view(tiles_gpu.data(), DType::Float32, {B, C, d, h, w}, 0), o, 0.5, 0);
  if (!agree("gather", it, tiles_cpu, tiles_gpu) || d > D || h > H || w > W || B == 0) return;
  for (int b = 0; b < B; ++b) o.at[b][0] = ri(0, D - d), o.at[b][1] = ri(0, H - h), o.at[b][2] = ri(0, W - w);
  std::vector<float> gauss(d * h * w);
  for (auto& v : gauss) v = float(ri(1, 100)) / 16.f;
  std::vector<float> acc_cpu(C * D * H * W, 0.f), acc_gpu = acc_cpu, weight_cpu(D * H * W, 0.f), weight_gpu = weight_cpu;
  accumulate_tiles_cpu(view(tiles_cpu.data(), DType::Float32, {B, C, d, h, w}, -1), view(gauss.data(), DType::Float32, {d, h, w}, -1),
                       o, view(acc_cpu.data(), DType::Float32, {C, D, H, W}, -1),
                       view(weight_cpu.data(), DType::Float32, {D, H, W}, -1));
  accumulate_tiles_cuda(view(tiles_cpu.data(), DType::Float32, {B, C, d, h, w}, 0), view(gauss.data(), DType::Float32, {d, h, w}, 0),
                        o, view(acc_gpu.data(), DType::Float32, {C, D, H, W}, 0),
                        view(weight_gpu.data(), DType::Float32, {D, H, W}, 0), 0);
  if (!agree("accumulate", it, acc_cpu, acc_gpu) || !agree("accumulate weight", it, weight_cpu, weight_gpu)) return;
  std::vector<uint8_t> labels_cpu(D * H * W, 9), labels_gpu = labels_cpu;
  finalize_tiles_cpu(view(acc_cpu.data(), DType::Float32, {C, D, H, W}, -1), view(labels_cpu.data(), DType::UInt8, {D, H, W}, -1));
  finalize_tiles_cuda(view(acc_cpu.data(), DType::Float32, {C, D, H, W}, 0), view(labels_gpu.data(), DType::UInt8, {D, H, W}, 0), 0);
  agree("finalize", it, labels_cpu, labels_gpu);
}

// Runs of labels in C- and Fortran-ordered volumes, labels outside 0..count, a NaN.
void check_stats(int it) {
  const int64_t shape[3] = {ri(1, 8), ri(1, 12), ri(1, 300)};
  const int64_t n = shape[0] * shape[1] * shape[2], count = ri(0, 9);
  const bool fortran = it % 2;
  std::vector<int32_t> labels(n);
  for (auto& l : labels) l = ri(0, 3) ? 0 : int32_t(ri(0, count + (it % 5 == 0 ? 2 : 0)));
  for (int64_t i = 1; i < n; ++i)
    if (ri(0, 3)) labels[i] = labels[i - 1];
  std::vector<float> image(n);
  for (auto& v : image) v = float(ri(-500, 500)) / 3.f;
  if (it % 7 == 0) image[ri(0, n - 1)] = NAN;
  std::vector<double> acc_cpu((count + 1) * kStatsColumns), acc_gpu(acc_cpu.size());
  std::vector<int32_t> box_cpu((count + 1) * 6), box_gpu(box_cpu.size());
  for (bool with_image : {false, true}) {
    const Volume lc = volume(labels.data(), DType::Int32, shape, fortran, -1), ic = volume(image.data(), DType::Float32, shape, fortran, -1);
    Volume lg = lc, ig = ic;
    lg.device = ig.device = 0;
    component_stats_cpu(lc, with_image ? &ic : nullptr, count, acc_cpu.data(), box_cpu.data());
    component_stats_cuda(lg, with_image ? &ig : nullptr, count, acc_gpu.data(), box_gpu.data(), 0);
    // Sums in another order: equal to float64 rounding (a sum near 0 of terms up to 167 rounds to
    // about 1e-11, so 1e-6 absolute below 1000; a voxel missed or counted twice moves it by 1/3).
    agree("component_stats", it, acc_cpu, acc_gpu, 1e-9, 1000);
    agree("component_stats box", it, box_cpu, box_gpu);
  }
}

// Planar and channels-last activations in float32, float16 and bfloat16, with and without a
// residual, planes that do and do not allow 16-byte loads.
void check_norm_act(int it) {
  const int64_t N = ri(1, 3), C = ri(1, 40), S = it % 2 ? ri(1, 300) : 8 * ri(1, 40);
  const bool planar = it % 3 != 0, with_residual = it % 4 < 2;
  const DType dtype = it % 5 == 0 ? DType::Float16 : (it % 5 == 1 ? DType::BFloat16 : DType::Float32);
  std::vector<float> xf(N * C * S), rf(xf.size()), gamma(C), beta(C);
  for (auto& v : xf) v = float(ri(-4000, 6000)) / 1000.f;
  for (auto& v : rf) v = float(ri(-1000, 1000)) / 1000.f;
  for (int64_t c = 0; c < C; ++c) gamma[c] = float(ri(500, 1500)) / 1000.f, beta[c] = float(ri(-500, 500)) / 1000.f;
  dispatch_float_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    std::vector<T> x(xf.size()), r(xf.size());
    for (size_t i = 0; i < x.size(); ++i) x[i] = from_float<T>(xf[i]), r[i] = from_float<T>(rf[i]);
    std::vector<T> out_cpu = x, out_gpu = x;
    auto nd = [&](void* p, int device) {
      NdView v = view(p, dtype, {N, C, S}, device);
      if (!planar) v.strides[1] = 1, v.strides[2] = C;
      return v;
    };
    std::vector<double> stats(4 * N * C, 99.0);
    const NdView rc = nd(r.data(), -1), rg = nd(r.data(), 0);
    instance_norm_act_cpu(nd(x.data(), -1), with_residual ? &rc : nullptr, view(gamma.data(), DType::Float32, {C}, -1),
                          view(beta.data(), DType::Float32, {C}, -1), nd(out_cpu.data(), -1), 1e-5, 0.01);
    instance_norm_act_cuda(nd(x.data(), 0), with_residual ? &rg : nullptr, view(gamma.data(), DType::Float32, {C}, 0),
                           view(beta.data(), DType::Float32, {C}, 0), nd(out_gpu.data(), 0), 1e-5, 0.01,
                           view(stats.data(), DType::Float64, {4 * N * C}, 0), 0);
    std::vector<float> a(x.size()), b(x.size());
    for (size_t i = 0; i < x.size(); ++i) a[i] = to_float(out_cpu[i]), b[i] = to_float(out_gpu[i]);
    // Float32 partial sums in another order: one rounding of the dtype apart.
    agree("instance_norm_act", it, a, b, std::is_same_v<T, float> ? 1e-4f : (std::is_same_v<T, Half> ? 2e-3f : 1.6e-2f));
  });
}

// Prefilter with and without edge padding, from int16 and float32 sources in C and Fortran order;
// a convolution along each axis.
void check_filters(int it) {
  const int64_t shape[3] = {ri(1, 9), ri(1, 12), ri(1, 30)}, pad = it % 2 ? ri(1, 3) : 0;
  const int64_t n = shape[0] * shape[1] * shape[2];
  const bool fortran = it % 3 == 0;
  std::vector<int16_t> si(n);
  std::vector<float> sf(n);
  for (int64_t i = 0; i < n; ++i) si[i] = int16_t(ri(-1000, 1000)), sf[i] = float(si[i]) / 7.f;
  const int64_t cshape[3] = {shape[0] + 2 * pad, shape[1] + 2 * pad, shape[2] + 2 * pad};
  std::vector<float> coef_cpu(cshape[0] * cshape[1] * cshape[2], -1.f), coef_gpu = coef_cpu;
  const bool int16 = it % 4 < 2;
  void* src = int16 ? static_cast<void*>(si.data()) : sf.data();
  const DType t = int16 ? DType::Int16 : DType::Float32;
  bspline_prefilter_cpu(volume(src, t, shape, fortran, -1), volume(coef_cpu.data(), DType::Float32, cshape, false, -1));
  bspline_prefilter_cuda(volume(src, t, shape, fortran, 0), volume(coef_gpu.data(), DType::Float32, cshape, false, 0), 0);
  // The CPU twin runs the recursion in another order (planes, blocks of lines): float32 rounding
  // apart, relative to the volume's largest coefficient (the recursion carries it to its
  // neighbours), as in the CUDA test on hardware.
  float largest = 1.f;
  for (float v : coef_cpu) largest = std::max(largest, std::fabs(v));
  agree("bspline_prefilter", it, coef_cpu, coef_gpu, 1e-5f, largest);
  std::vector<float> taps(2 * ri(0, 4) + 1);
  for (auto& w : taps) w = float(ri(1, 100)) / 100.f;
  const int axis = int(it % 3);
  std::vector<float> conv_cpu(n, -1.f), conv_gpu(n, -1.f);
  convolve_axis_cpu(volume(src, t, shape, fortran, -1), volume(conv_cpu.data(), DType::Float32, shape, false, -1), axis, taps);
  convolve_axis_cuda(volume(src, t, shape, fortran, 0), volume(conv_gpu.data(), DType::Float32, shape, false, 0), axis, taps, 0);
  agree("convolve_axis", it, conv_cpu, conv_gpu, 1e-5f);
}

// Nearest, trilinear and cubic (on prefiltered coefficients) sampling through a random affine map
// that reaches past the source, with a fill value, into C- and Fortran-ordered outputs.
void check_resample(int it) {
  const int64_t sshape[3] = {ri(1, 10), ri(1, 12), ri(1, 20)}, dshape[3] = {ri(1, 10), ri(1, 12), ri(1, 20)};
  const int64_t n = sshape[0] * sshape[1] * sshape[2], m = dshape[0] * dshape[1] * dshape[2];
  std::vector<float> src(n);
  for (auto& v : src) v = float(ri(-1000, 1000)) / 7.f;
  ResampleArgs args;
  args.order = it % 3 == 0 ? 0 : (it % 3 == 1 ? 1 : 3);
  args.fill = -3.5;
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 4; ++c)
      args.map.m[r][c] = c == 3 ? double(ri(-300, 300)) / 100.0 : (r == c ? double(ri(30, 250)) / 100.0 : double(ri(-20, 20)) / 100.0);
  if (args.order == 3) bspline_prefilter_cpu(volume(src.data(), DType::Float32, sshape, false, -1),
                                             volume(src.data(), DType::Float32, sshape, false, -1));
  const bool fortran = it % 2;
  std::vector<float> out_cpu(m, 7.f), out_gpu(m, 7.f);
  resample_cpu(volume(src.data(), DType::Float32, sshape, false, -1), volume(out_cpu.data(), DType::Float32, dshape, fortran, -1), args);
  resample_cuda(volume(src.data(), DType::Float32, sshape, false, 0), volume(out_gpu.data(), DType::Float32, dshape, fortran, 0), args, 0);
  agree("resample", it, out_cpu, out_gpu, 1e-5f);
}

// One component filling a 16 x 48 x 300 volume (768 rows), with an image: its statistics by
// component_stats_cuda and by both labeller paths, checked against component_stats_cpu, and the
// most atomics any of them made on one address of the tables. Every one of them goes to the
// component's row; how many queue there is what decides the speed on a GPU.
int count_atomics() {
  const int64_t shape[3] = {16, 48, 300}, n = shape[0] * shape[1] * shape[2];
  std::vector<uint8_t> mask(n, 1);
  std::vector<int32_t> labels(n, 1), out(n);
  std::vector<float> image(n);
  for (auto& v : image) v = float(ri(0, 1000)) / 8.f;
  std::vector<double> want_acc(2 * kStatsColumns), acc(want_acc.size());
  std::vector<int32_t> want_box(12), box(12), scratch(label_scratch_layout(shape).total);
  const int64_t flat[3] = {int64_t(scratch.size()), 1, 1};
  const Volume image_cpu = volume(image.data(), DType::Float32, shape, false, -1);
  Volume image_gpu = image_cpu;
  image_gpu.device = 0;
  component_stats_cpu(volume(labels.data(), DType::Int32, shape, false, -1), &image_cpu, 1, want_acc.data(), want_box.data());
  auto most = [&] {
    long long m = 0;
    for (const auto& kv : emu::atomics) {
      const char* a = static_cast<const char*>(kv.first);
      const bool tables = (a >= reinterpret_cast<const char*>(acc.data()) && a < reinterpret_cast<const char*>(acc.data() + acc.size())) ||
                          (a >= reinterpret_cast<const char*>(box.data()) && a < reinterpret_cast<const char*>(box.data() + box.size()));
      if (tables) m = std::max(m, kv.second);
    }
    emu::atomics.clear();
    return m;
  };
  emu::counting = true;
  component_stats_cuda(volume(labels.data(), DType::Int32, shape, false, 0), &image_gpu, 1, acc.data(), box.data(), 0);
  const long long stats = most();
  agree("component_stats, one component", 0, want_acc, acc, 1e-9, 1000);
  agree("component_stats box, one component", 0, want_box, box);
  long long paths[2];
  for (int p = 0; p < 2; ++p) {  // 26-connectivity: the block path; 18: the voxel path
    const LabelStats st{&image_gpu, acc.data(), box.data(), 1};
    label_cuda(volume(mask.data(), DType::UInt8, shape, false, 0), volume(out.data(), DType::Int32, shape, false, 0),
               p == 0 ? 26 : 18, volume(scratch.data(), DType::Int32, flat, false, 0), &st, 0);
    paths[p] = most();
    agree(p == 0 ? "label statistics, block path" : "label statistics, voxel path", 0, want_acc, acc, 1e-9, 1000);
    agree(p == 0 ? "label statistics box, block path" : "label statistics box, voxel path", 0, want_box, box);
  }
  emu::counting = false;
  std::printf("%lld rows; most atomics on one address: component_stats %lld, block path %lld, voxel path %lld\n",
              shape[0] * shape[1], stats, paths[0], paths[1]);
  return failures != 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "atomics") return count_atomics();
  const int iterations = argc > 1 ? std::atoi(argv[1]) : 40;
  rng.seed(argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 0);
  emu::rng.seed(rng());
  for (int it = 0; it < iterations; ++it) check_label(it);
  for (int it = 0; it < iterations; ++it) check_tiles(it);
  for (int it = 0; it < iterations; ++it) check_stats(it);
  for (int it = 0; it < iterations; ++it) check_norm_act(it);
  for (int it = 0; it < iterations; ++it) check_filters(it);
  for (int it = 0; it < iterations; ++it) check_resample(it);
  std::printf("%d cases of each kernel: %d differ\n", iterations, failures);
  return failures != 0;
}
