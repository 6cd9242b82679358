// CUDA twin of cpu/component_stats_cpu.cpp. A line of threads per row (i, j) of the labels; each
// thread sums a run of voxels along k while the label stays the same and adds the run to its
// label's row with one set of atomics (a lesion's row costs a few, not one per voxel). Where every
// run a warp ends with has one label (inside an organ or a large lesion), the warp sums them first
// and adds them with one set: a dense label map would otherwise queue 32x as many atomics on the
// few rows of its large components.
#include <algorithm>
#include <climits>
#include <cmath>

#include "cuda/common.cuh"
#include "petfast/ops.h"

namespace petfast {
namespace {

constexpr int kRun = 4;
constexpr int kRowsPerBlock = 4;

__device__ void atomic_max_double(double* address, double v) {
  unsigned long long* p = reinterpret_cast<unsigned long long*>(address);
  unsigned long long old = *p;
  while (__longlong_as_double(old) < v) {
    const unsigned long long seen = atomicCAS(p, old, __double_as_longlong(v));
    if (seen == old) break;
    old = seen;
  }
}

__global__ void init_kernel(int64_t rows, double* acc, int32_t* box) {
  for (int64_t l = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; l < rows; l += int64_t(gridDim.x) * blockDim.x)
    init_stats_row(l, acc, box);
}

struct Run {
  int label = 0, k_min = 0, k_max = 0, voxels = 0, nans = 0;
  double sum_k = 0, sum = 0, max = -INFINITY;
};

__device__ void add_run(const Run& r, int i, int j, bool with_image, double* acc, int32_t* box) {
  double* a = acc + int64_t(r.label) * kStatsColumns;
  atomicAdd(a + 0, double(r.voxels));
  atomicAdd(a + 1, double(i) * r.voxels);
  atomicAdd(a + 2, double(j) * r.voxels);
  atomicAdd(a + 3, r.sum_k);
  if (with_image) {
    atomicAdd(a + 4, r.sum);
    atomic_max_double(a + 5, r.max);
    if (r.nans) atomicAdd(acc, double(r.nans));  // row 0: NaN count (the caller raises)
  }
  int32_t* b = box + int64_t(r.label) * 6;
  atomicMin(b + 0, i);
  atomicMax(b + 1, i);
  atomicMin(b + 2, j);
  atomicMax(b + 3, j);
  atomicMin(b + 4, r.k_min);
  atomicMax(b + 5, r.k_max);
}

// The warp's last runs: summed across the warp into one set of atomics when they share one label,
// else each added as it is. Every lane of the warp calls it.
__device__ void add_warp_runs(const Run& r, int i, int j, bool with_image, double* acc, int32_t* box) {
  constexpr unsigned kAll = 0xffffffffu;
  const unsigned lanes = __ballot_sync(kAll, r.voxels > 0);
  if (lanes == 0) return;
  const int leader = __ffs(lanes) - 1, label = __shfl_sync(kAll, r.label, leader);
  if (__ballot_sync(kAll, r.voxels > 0 && r.label != label)) {
    if (r.voxels) add_run(r, i, j, with_image, acc, box);
    return;
  }
  Run total = r;
  if (!r.voxels) total.k_min = INT_MAX, total.k_max = -1;  // max stays -inf, sums 0
  for (int d = 16; d; d >>= 1) {
    total.voxels += __shfl_xor_sync(kAll, total.voxels, d);
    total.nans += __shfl_xor_sync(kAll, total.nans, d);
    total.k_min = min(total.k_min, __shfl_xor_sync(kAll, total.k_min, d));
    total.k_max = max(total.k_max, __shfl_xor_sync(kAll, total.k_max, d));
    total.sum_k += __shfl_xor_sync(kAll, total.sum_k, d);
    total.sum += __shfl_xor_sync(kAll, total.sum, d);
    total.max = fmax(total.max, __shfl_xor_sync(kAll, total.max, d));
  }
  if ((threadIdx.x & 31) == leader) {
    total.label = label;
    add_run(total, i, j, with_image, acc, box);
  }
}

template <typename T>
__global__ void stats_kernel(const int32_t* __restrict__ lab, Volume labels, const T* __restrict__ img, Volume image,
                             int count, double* acc, int32_t* box) {
  const int n1 = int(labels.shape[1]), n2 = int(labels.shape[2]);
  const int64_t row64 = int64_t(blockIdx.x) * blockDim.y + threadIdx.y;
  if (row64 >= labels.shape[0] * n1) return;
  const int row = int(row64), i = row / n1, j = row - i * n1;
  const int32_t* lab_row = lab + i * labels.strides[0] + j * labels.strides[1];
  const T* img_row = img ? img + i * image.strides[0] + j * image.strides[1] : nullptr;
  // The same number of rounds for every lane (a warp lies within one row), for add_warp_runs.
  for (int base = 0; base < n2; base += blockDim.x * kRun) {
    const int k0 = base + threadIdx.x * kRun, k1 = min(k0 + kRun, n2);  // k1 <= k0: a lane past the row
    Run r;
    int run_labels[kRun];  // all loaded before any is used: kRun loads in flight, not one
#pragma unroll
    for (int u = 0; u < kRun; ++u) run_labels[u] = k0 + u < k1 ? lab_row[(k0 + u) * labels.strides[2]] : 0;
#pragma unroll
    for (int u = 0; u < kRun; ++u) {  // unrolled, so that run_labels stays in registers
      const int k = k0 + u, l = run_labels[u];
      if (k >= k1) break;
      if (l != r.label) {
        if (r.voxels) add_run(r, i, j, img != nullptr, acc, box);
        r = Run();
        r.label = l;
        r.k_min = k;
      }
      if (l <= 0 || l > count) {
        if (l != 0) atomicAdd(acc + 1, 1.0);  // a label outside 1..count: counted in row 0 (the caller raises)
        continue;
      }
      r.k_max = k;
      ++r.voxels;
      r.sum_k += k;
      if (img_row) {
        const double v = double(img_row[k * image.strides[2]]);
        r.nans += v != v;
        r.sum += v;
        r.max = fmax(r.max, v);
      }
    }
    add_warp_runs(r, i, j, img != nullptr, acc, box);
  }
}

}  // namespace

void component_stats_cuda(const Volume& labels, const Volume* image, int64_t count, double* acc, int32_t* box,
                          uintptr_t stream_handle) {
  DeviceGuard guard(labels.device);
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const int64_t rows = labels.shape[0] * labels.shape[1];
  require(rows < INT32_MAX && labels.shape[2] < INT32_MAX / 2, "component_stats: too many rows for one launch");
  // Warps enough to cover a row, and kRowsPerBlock rows per CUDA block (one row of 400 labels per
  // block read them at 0.93 TB/s on an H200).
  const dim3 threads(unsigned(std::min<int64_t>(128, (labels.shape[2] + 32 * kRun - 1) / (32 * kRun) * 32)), kRowsPerBlock);
  const unsigned blocks = unsigned((rows + kRowsPerBlock - 1) / kRowsPerBlock);
  const int32_t* lab = static_cast<const int32_t*>(labels.data);
  init_kernel<<<grid_dim((count + 1 + 127) / 128, 1 << 16), 128, 0, stream>>>(count + 1, acc, box);
  if (!image) {
    stats_kernel<float><<<blocks, threads, 0, stream>>>(lab, labels, nullptr, labels, int(count), acc, box);
  } else {
    dispatch_dtype(image->dtype, [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      stats_kernel<T><<<blocks, threads, 0, stream>>>(lab, labels, static_cast<const T*>(image->data), *image,
                                                              int(count), acc, box);
    });
  }
  cuda_check(cudaGetLastError(), "component statistics launch");
}

}  // namespace petfast
