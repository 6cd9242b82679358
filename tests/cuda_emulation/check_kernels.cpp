// The CUDA labeller, tile and statistics kernels, compiled for the host against the emulated runtime
// in this folder, against their CPU twins on random cases. Exit status 0 when every case agrees.
//   check_kernels ITERATIONS SEED
#include <cuda_runtime.h>

#include <cstdio>
#include <random>
#include <vector>

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

template <typename T>
bool differ(const char* what, int iteration, const std::vector<T>& a, const std::vector<T>& b) {
  for (size_t i = 0; i < a.size(); ++i)
    if (!(a[i] == b[i] || (a[i] != a[i] && b[i] != b[i]))) {  // equal, or both NaN
      fail(what, iteration, i);
      return true;
    }
  return false;
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

// Sparse, dense, 2x2x2-blocky (the block path) and multi-label masks, 6/18/26-connectivity, odd
// and even sizes.
void check_label(int it) {
  const int64_t shape[3] = {ri(1, 9), ri(1, 13), ri(1, 40)};
  const int64_t n = shape[0] * shape[1] * shape[2];
  const int connectivity = it % 3 == 0 ? 6 : (it % 3 == 1 ? 18 : 26), kind = it % 4;
  std::vector<uint8_t> mask(n);
  std::bernoulli_distribution on(kind == 0 ? 0.08 : 0.5);
  for (auto& v : mask) v = on(rng);
  if (kind == 2)
    for (int64_t i = 0; i < shape[0]; ++i)
      for (int64_t j = 0; j < shape[1]; ++j)
        for (int64_t k = 0; k < shape[2]; ++k)
          mask[(i * shape[1] + j) * shape[2] + k] = mask[((i & ~1) * shape[1] + (j & ~1)) * shape[2] + (k & ~1)];
  if (kind == 3)
    for (auto& v : mask) v = v ? uint8_t(ri(1, 3)) : 0;
  std::vector<int32_t> cpu(n, 0), gpu(n, -1);
  const int order[3] = {0, 1, 2};
  const int64_t count_cpu = label_cpu(volume(mask.data(), DType::UInt8, shape, false, -1),
                                      volume(cpu.data(), DType::Int32, shape, false, -1), connectivity, order);
  std::vector<int32_t> scratch(label_scratch_layout(shape).total, 12345);  // the kernels must not need it zeroed
  const int64_t flat[3] = {int64_t(scratch.size()), 1, 1};
  const int64_t count_gpu = label_cuda(volume(mask.data(), DType::UInt8, shape, false, 0),
                                       volume(gpu.data(), DType::Int32, shape, false, 0), connectivity,
                                       volume(scratch.data(), DType::Int32, flat, false, 0), 0);
  if (count_cpu != count_gpu) fail("label count", it, 0);
  differ("label", it, cpu, gpu);
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
  if (differ("gather", it, tiles_cpu, tiles_gpu) || d > D || h > H || w > W || B == 0) return;
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
  if (differ("accumulate", it, acc_cpu, acc_gpu) || differ("accumulate weight", it, weight_cpu, weight_gpu)) return;
  std::vector<uint8_t> labels_cpu(D * H * W, 9), labels_gpu = labels_cpu;
  finalize_tiles_cpu(view(acc_cpu.data(), DType::Float32, {C, D, H, W}, -1), view(labels_cpu.data(), DType::UInt8, {D, H, W}, -1));
  finalize_tiles_cuda(view(acc_cpu.data(), DType::Float32, {C, D, H, W}, 0), view(labels_gpu.data(), DType::UInt8, {D, H, W}, 0), 0);
  differ("finalize", it, labels_cpu, labels_gpu);
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
    // about 1e-11; a voxel missed or counted twice moves it by at least 1/3).
    for (size_t i = 0; i < acc_cpu.size(); ++i)
      if (!(acc_cpu[i] == acc_gpu[i] || (std::isnan(acc_cpu[i]) && std::isnan(acc_gpu[i])) ||
            std::fabs(acc_cpu[i] - acc_gpu[i]) <= 1e-6 + 1e-9 * std::fabs(acc_cpu[i]))) {
        fail("component_stats", it, i);
        std::printf("  row %zu column %zu: %.17g vs %.17g\n", i / kStatsColumns, i % kStatsColumns, acc_cpu[i], acc_gpu[i]);
        break;
      }
    differ("component_stats box", it, box_cpu, box_gpu);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int iterations = argc > 1 ? std::atoi(argv[1]) : 40;
  rng.seed(argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 0);
  emu::rng.seed(rng());
  for (int it = 0; it < iterations; ++it) check_label(it);
  for (int it = 0; it < iterations; ++it) check_tiles(it);
  for (int it = 0; it < iterations; ++it) check_stats(it);
  std::printf("%d cases each of label, tiles and component_stats: %d differ\n", iterations, failures);
  return failures != 0;
}
