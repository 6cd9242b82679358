// Component statistics on the GPU as runs: a thread sums the voxels it visits while their label
// stays the same and adds the run to its label's rows with one set of atomics; where every run a
// warp ends with has one label (inside an organ or a large lesion), the warp sums them first and
// adds them with one set. Shared by component_stats_cuda.cu and the labeller, which gathers the
// statistics while it writes the labels. Tables as component_stats_cpu's (ops.h).
#pragma once
#include <climits>
#include <cmath>

#include "cuda/common.cuh"
#include "petfast/ops.h"

namespace petfast {

__device__ inline void atomic_max_double(double* address, double v) {
  unsigned long long* p = reinterpret_cast<unsigned long long*>(address);
  unsigned long long old = *p;
  while (__longlong_as_double(old) < v) {
    const unsigned long long seen = atomicCAS(p, old, __double_as_longlong(v));
    if (seen == old) break;
    old = seen;
  }
}

namespace {  // a kernel per translation unit

__global__ void init_stats_kernel(int64_t rows, double* acc, int32_t* box) {
  for (int64_t l = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; l < rows; l += int64_t(gridDim.x) * blockDim.x)
    init_stats_row(l, acc, box);
}

// Rows 0..rows-1 of the tables to the identities of their sums, minima and maxima.
inline void init_stats(int64_t rows, double* acc, int32_t* box, cudaStream_t stream) {
  init_stats_kernel<<<grid_dim((rows + 127) / 128, 1 << 16), 128, 0, stream>>>(rows, acc, box);
}

}  // namespace

// Voxels of one label: their count, coordinate sums and bounds, and image sum, maximum and NaNs.
// An empty run (voxels 0) is the identity of every sum, minimum and maximum.
struct Run {
  int label = 0, voxels = 0, nans = 0;
  int lo[3] = {INT_MAX, INT_MAX, INT_MAX}, hi[3] = {-1, -1, -1};
  double coord[3] = {0, 0, 0}, value_sum = 0, value_max = -INFINITY;

  __device__ void add(int i, int j, int k) {
    const int x[3] = {i, j, k};
    ++voxels;
#pragma unroll
    for (int a = 0; a < 3; ++a) {
      coord[a] += x[a];
      lo[a] = min(lo[a], x[a]);
      hi[a] = max(hi[a], x[a]);
    }
  }
  __device__ void add_value(double v) {
    nans += v != v;
    value_sum += v;
    value_max = fmax(value_max, v);
  }
};

__device__ inline void add_run(const Run& r, bool with_image, double* acc, int32_t* box) {
  double* a = acc + int64_t(r.label) * kStatsColumns;
  atomicAdd(a + 0, double(r.voxels));
#pragma unroll
  for (int c = 0; c < 3; ++c) atomicAdd(a + 1 + c, r.coord[c]);
  if (with_image) {
    atomicAdd(a + 4, r.value_sum);
    atomic_max_double(a + 5, r.value_max);
    if (r.nans) atomicAdd(acc, double(r.nans));  // row 0: NaN count (the caller raises)
  }
  int32_t* b = box + int64_t(r.label) * 6;
#pragma unroll
  for (int c = 0; c < 3; ++c) {
    atomicMin(b + 2 * c, r.lo[c]);
    atomicMax(b + 2 * c + 1, r.hi[c]);
  }
}

// The warp's last runs: summed across the warp into one set of atomics when they share one label,
// else each added as it is. Every lane of the warp calls it (empty runs too).
__device__ inline void add_warp_runs(const Run& r, bool with_image, double* acc, int32_t* box) {
  constexpr unsigned kAll = 0xffffffffu;
  const unsigned lanes = __ballot_sync(kAll, r.voxels > 0);
  if (lanes == 0) return;
  const int leader = __ffs(lanes) - 1, label = __shfl_sync(kAll, r.label, leader);
  if (__ballot_sync(kAll, r.voxels > 0 && r.label != label)) {
    if (r.voxels) add_run(r, with_image, acc, box);
    return;
  }
  Run total = r;
  for (int d = 16; d; d >>= 1) {
    total.voxels += __shfl_xor_sync(kAll, total.voxels, d);
    total.nans += __shfl_xor_sync(kAll, total.nans, d);
#pragma unroll
    for (int a = 0; a < 3; ++a) {
      total.lo[a] = min(total.lo[a], __shfl_xor_sync(kAll, total.lo[a], d));
      total.hi[a] = max(total.hi[a], __shfl_xor_sync(kAll, total.hi[a], d));
      total.coord[a] += __shfl_xor_sync(kAll, total.coord[a], d);
    }
    if (with_image) {
      total.value_sum += __shfl_xor_sync(kAll, total.value_sum, d);
      total.value_max = fmax(total.value_max, __shfl_xor_sync(kAll, total.value_max, d));
    }
  }
  if ((threadIdx.x & 31) == leader) {
    total.label = label;
    add_run(total, with_image, acc, box);
  }
}

}  // namespace petfast
