// CUDA twin of cpu/label_cpu.cpp: union-find over logical (i, j, k) raster indices with atomicMin
// unions (the smaller index stays root, so a root is its component's first voxel in raster order),
// then compression, then an exclusive scan of root flags that numbers the roots 1..N in raster
// order: the same numbering as the CPU twin, scipy.ndimage.label and cc3d (C order).
// Labels are C-contiguous; the mask may have any strides. Entries hold parent index + 1 (0 = background).
#include <vector>

#include "cuda/common.cuh"
#include "petfast/ops.h"

namespace petfast {
namespace {

constexpr int kScanBlock = 1024;

struct Shape3 {
  int64_t n0, n1, n2, s0, s1, s2;  // logical shape and the mask's element strides
};

// Backward neighbours (di, dj, dk) in the CPU twin's order: 6-connectivity uses the first 3,
// 18 the first 9, 26 all 13.
__constant__ int kNeighbours[13][3] = {{0, 0, -1},  {0, -1, 0},  {-1, 0, 0},  {0, -1, -1}, {0, -1, 1},
                                       {-1, -1, 0}, {-1, 1, 0},  {-1, 0, -1}, {-1, 0, 1},  {-1, -1, -1},
                                       {-1, -1, 1}, {-1, 1, -1}, {-1, 1, 1}};

// Other threads re-parent entries concurrently (always to an ancestor), so reads go to memory.
__device__ __forceinline__ int find_root(const int* parent, int v) {
  const volatile int* p = parent;
  for (int q; (q = p[v] - 1) != v;) v = q;
  return v;
}

__device__ void unite(int* parent, int a, int b) {
  while (true) {
    a = find_root(parent, a);
    b = find_root(parent, b);
    if (a == b) return;
    if (a > b) {
      const int t = a;
      a = b;
      b = t;
    }
    // Hang the larger root b under a, unless another thread re-parented b meanwhile: then retry.
    const int old = atomicMin(parent + b, a + 1);
    if (old == b + 1) return;
    b = old - 1;
  }
}

template <typename T>
__global__ void init_kernel(const T* __restrict__ in, Shape3 s, int* out) {
  const int64_t n = s.n0 * s.n1 * s.n2;
  for (int64_t v = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; v < n; v += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = v / (s.n1 * s.n2), j = (v / s.n2) % s.n1, k = v % s.n2;
    out[v] = in[i * s.s0 + j * s.s1 + k * s.s2] != T(0) ? int(v + 1) : 0;
  }
}

template <typename T>
__global__ void merge_kernel(const T* __restrict__ in, Shape3 s, int* out, int connectivity) {
  const int64_t n = s.n0 * s.n1 * s.n2;
  for (int64_t v = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; v < n; v += int64_t(gridDim.x) * blockDim.x) {
    if (out[v] == 0) continue;
    const int64_t i = v / (s.n1 * s.n2), j = (v / s.n2) % s.n1, k = v % s.n2;
    const T val = in[i * s.s0 + j * s.s1 + k * s.s2];
    const int count = connectivity == 6 ? 3 : (connectivity == 18 ? 9 : 13);
#pragma unroll
    for (int q = 0; q < 13; ++q) {
      if (q >= count) break;
      const int64_t i2 = i + kNeighbours[q][0], j2 = j + kNeighbours[q][1], k2 = k + kNeighbours[q][2];
      if (i2 < 0 || j2 < 0 || j2 >= s.n1 || k2 < 0 || k2 >= s.n2) continue;
      if (in[i2 * s.s0 + j2 * s.s1 + k2 * s.s2] != val) continue;
      unite(out, int(v), int((i2 * s.n1 + j2) * s.n2 + k2));
    }
  }
}

__global__ void compress_kernel(int* out, int64_t n) {
  for (int64_t v = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; v < n; v += int64_t(gridDim.x) * blockDim.x) {
    const int p = out[v];
    if (p != 0) out[v] = find_root(out, int(v)) + 1;
  }
}

__device__ __forceinline__ int block_exclusive_scan(int flag, int* warp_sums, int* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int x = flag;
  for (int d = 1; d < 32; d <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, x, d);
    if (lane >= d) x += y;
  }
  if (lane == 31) warp_sums[warp] = x;
  __syncthreads();
  if (warp == 0) {
    int w = lane < (blockDim.x >> 5) ? warp_sums[lane] : 0;
    for (int d = 1; d < 32; d <<= 1) {
      const int y = __shfl_up_sync(0xffffffffu, w, d);
      if (lane >= d) w += y;
    }
    warp_sums[lane] = w;  // inclusive over warps
  }
  __syncthreads();
  const int before = (warp > 0 ? warp_sums[warp - 1] : 0) + x - flag;
  if (total) *total = warp_sums[(blockDim.x >> 5) - 1];
  return before;
}

__global__ void count_roots_kernel(const int* out, int64_t n, int* block_counts) {
  __shared__ int warp_sums[32];
  const int64_t v = int64_t(blockIdx.x) * kScanBlock + threadIdx.x;
  const int flag = v < n && out[v] == int(v + 1);
  int total;
  block_exclusive_scan(flag, warp_sums, &total);
  if (threadIdx.x == 0) block_counts[blockIdx.x] = total;
}

// One block turns the per-block counts into exclusive offsets; the grand total goes last.
__global__ void scan_counts_kernel(int* block_counts, int64_t blocks) {
  __shared__ int warp_sums[32];
  __shared__ int carry;
  if (threadIdx.x == 0) carry = 0;
  __syncthreads();
  for (int64_t base = 0; base < blocks; base += kScanBlock) {
    const int64_t b = base + threadIdx.x;
    const int c = b < blocks ? block_counts[b] : 0;
    int total;
    const int before = block_exclusive_scan(c, warp_sums, &total);
    if (b < blocks) block_counts[b] = carry + before;
    __syncthreads();
    if (threadIdx.x == 0) carry += total;
    __syncthreads();
  }
  if (threadIdx.x == 0) block_counts[blocks] = carry;
}

__global__ void number_roots_kernel(int* out, int64_t n, const int* block_offsets) {
  __shared__ int warp_sums[32];
  const int64_t v = int64_t(blockIdx.x) * kScanBlock + threadIdx.x;
  const int flag = v < n && out[v] == int(v + 1);
  const int before = block_exclusive_scan(flag, warp_sums, nullptr);
  if (flag) out[v] = -(block_offsets[blockIdx.x] + before + 1);
}

__global__ void members_kernel(int* out, int64_t n) {
  for (int64_t v = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; v < n; v += int64_t(gridDim.x) * blockDim.x) {
    const int p = out[v];
    if (p > 0) out[v] = -out[p - 1];
  }
}

__global__ void flip_roots_kernel(int* out, int64_t n) {
  for (int64_t v = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; v < n; v += int64_t(gridDim.x) * blockDim.x) {
    if (out[v] < 0) out[v] = -out[v];
  }
}

unsigned int blocks_for(int64_t n) { return grid_dim((n + 255) / 256, 1 << 20); }

}  // namespace

int64_t label_cuda(const Volume& src, const Volume& dst, int connectivity, const Volume& scratch, uintptr_t stream_handle) {
  DeviceGuard guard(src.device);
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const Shape3 s{src.shape[0], src.shape[1], src.shape[2], src.strides[0], src.strides[1], src.strides[2]};
  const int64_t n = src.size(), scan_blocks = (n + kScanBlock - 1) / kScanBlock;
  require(scratch.dtype == DType::Int32 && scratch.size() >= scan_blocks + 1, "internal: label scratch too small");
  int* out = static_cast<int*>(dst.data);
  int* counts = static_cast<int*>(scratch.data);
  dispatch_dtype(src.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* in = static_cast<const T*>(src.data);
    init_kernel<T><<<blocks_for(n), 256, 0, stream>>>(in, s, out);
    merge_kernel<T><<<blocks_for(n), 256, 0, stream>>>(in, s, out, connectivity);
  });
  compress_kernel<<<blocks_for(n), 256, 0, stream>>>(out, n);
  count_roots_kernel<<<unsigned(scan_blocks), kScanBlock, 0, stream>>>(out, n, counts);
  scan_counts_kernel<<<1, kScanBlock, 0, stream>>>(counts, scan_blocks);
  number_roots_kernel<<<unsigned(scan_blocks), kScanBlock, 0, stream>>>(out, n, counts);
  members_kernel<<<blocks_for(n), 256, 0, stream>>>(out, n);
  flip_roots_kernel<<<blocks_for(n), 256, 0, stream>>>(out, n);
  cuda_check(cudaGetLastError(), "label kernels launch");
  int total = 0;
  cuda_check(cudaMemcpyAsync(&total, counts + scan_blocks, sizeof(int), cudaMemcpyDeviceToHost, stream), "label count copy");
  cuda_check(cudaStreamSynchronize(stream), "label");
  return total;
}

}  // namespace petfast
