// Component statistics on the GPU as runs: a thread sums the voxels it visits while their label
// stays the same; where every run a warp ends a round with has one label (inside an organ or a
// large lesion), the warp sums them, and carries the sum from round to round while the label stays
// the same; the block's warps' carried runs go to the tables at the end, those of one label summed.
// A run of another label goes to its label's rows with one set of atomics. Shared by
// component_stats_cuda.cu and the labeller, which gathers the statistics while it writes the
// labels. Tables as component_stats_cpu's (ops.h).
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
// An empty run (voxels 0) is the identity of every sum, minimum and maximum. Trivially
// constructible, so that warps can keep runs in shared memory: make one with Run::of(label).
struct Run {
  int label, voxels, nans;
  int lo[3], hi[3];
  double coord[3], value_sum, value_max;

  __device__ static Run of(int label) {
    Run r;
    r.label = label, r.voxels = 0, r.nans = 0;
#pragma unroll
    for (int a = 0; a < 3; ++a) r.lo[a] = INT_MAX, r.hi[a] = -1, r.coord[a] = 0;
    r.value_sum = 0, r.value_max = -INFINITY;
    return r;
  }
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
  // o's voxels (of the same label) join this run.
  __device__ void merge(const Run& o) {
    voxels += o.voxels;
    nans += o.nans;
#pragma unroll
    for (int a = 0; a < 3; ++a) {
      coord[a] += o.coord[a];
      lo[a] = min(lo[a], o.lo[a]);
      hi[a] = max(hi[a], o.hi[a]);
    }
    value_sum += o.value_sum;
    value_max = fmax(value_max, o.value_max);
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

// At most this many warps per CUDA block: the size of a kernel's array of carried runs.
constexpr int kMaxWarps = 32;

// This thread's warp within its (up to 3-D) CUDA block, for its slot in the carried runs.
__device__ __forceinline__ int warp_in_block() {
  return int((threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x) >> 5;
}

// The warp's runs of a round: summed across the warp when they share one label, and that sum
// merged into the warp's carried run (`carry`, in shared memory, which only lane 0 touches) while
// the label stays the same; the carried run goes to the tables when the label changes. Runs of
// several labels are each added as they are. Every lane of the warp calls it (empty runs too).
// Inside a body-sized component every round of every warp has one label: adding each round's sum
// queued millions of atomics on that label's row (at one address, about 0.7 ns each on an H200).
__device__ inline void add_warp_runs(const Run& r, bool with_image, double* acc, int32_t* box, Run& carry) {
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
  if ((threadIdx.x & 31) == 0) {  // every lane holds the sum; lane 0 keeps the carry
    total.label = label;
    if (carry.voxels && carry.label != label) add_run(carry, with_image, acc, box), carry.voxels = 0;
    if (carry.voxels) {
      carry.merge(total);
    } else {
      carry = total;
    }
  }
}

// A kernel's warps start with empty carried runs (lane 0 of each, before its first round).
__device__ __forceinline__ void clear_carry(Run* carries) {
  if ((threadIdx.x & 31) == 0) carries[warp_in_block()] = Run::of(0);
}

// The end of a kernel, reached by every thread of the block: the warps' carried runs go to the
// tables, those of one label summed first (one thread; a few dozen runs at most).
__device__ inline void add_carried_runs(Run* carries, bool with_image, double* acc, int32_t* box) {
  __syncthreads();
  if (threadIdx.x != 0 || threadIdx.y != 0 || threadIdx.z != 0) return;
  const int warps = int(blockDim.x * blockDim.y * blockDim.z + 31) / 32;
  for (int w = 0; w < warps; ++w) {
    if (carries[w].voxels == 0) continue;
    for (int w2 = w + 1; w2 < warps; ++w2) {
      if (carries[w2].voxels && carries[w2].label == carries[w].label) {
        carries[w].merge(carries[w2]);
        carries[w2].voxels = 0;
      }
    }
    add_run(carries[w], with_image, acc, box);
  }
}

}  // namespace petfast
