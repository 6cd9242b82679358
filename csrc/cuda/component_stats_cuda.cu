// CUDA twin of cpu/component_stats_cpu.cpp. A line of threads per row (i, j) of the labels; each
// thread sums a run of voxels along k while the label stays the same, and the runs go to the tables
// as cuda/component_runs.cuh describes (a lesion's row costs a few sets of atomics, not one per voxel).
#include <algorithm>

#include "cuda/component_runs.cuh"

namespace petfast {
namespace {

constexpr int kRun = 4;
constexpr int kRowsPerBlock = 4;

// Two CUDA blocks per SM at most 64 registers a thread: loads in flight decide this kernel's speed.
// The blocks loop over the rows, kRowsPerBlock at a time, so that a warp carries its runs of one
// label across rows (cuda/component_runs.cuh).
template <typename T>
__global__ void __launch_bounds__(128 * kRowsPerBlock, 2) stats_kernel(const int32_t* __restrict__ lab, Volume labels, const T* __restrict__ img, Volume image,
                             int count, double* acc, int32_t* box) {
  __shared__ Run carries[kMaxWarps];
  clear_carry(carries);
  Run& carry = carries[warp_in_block()];
  const int n1 = int(labels.shape[1]), n2 = int(labels.shape[2]);
  const int64_t rows = labels.shape[0] * n1;
  const int64_t row_step = int64_t(gridDim.x) * blockDim.y;
  for (int64_t row64 = int64_t(blockIdx.x) * blockDim.y + threadIdx.y; row64 < rows; row64 += row_step) {
    const int row = int(row64), i = row / n1, j = row - i * n1;
    const int32_t* lab_row = lab + i * labels.strides[0] + j * labels.strides[1];
    const T* img_row = img ? img + i * image.strides[0] + j * image.strides[1] : nullptr;
    // The same number of rounds for every lane (a warp lies within one row), for add_warp_runs.
    for (int base = 0; base < n2; base += blockDim.x * kRun) {
      const int k0 = base + threadIdx.x * kRun, k1 = min(k0 + kRun, n2);  // k1 <= k0: a lane past the row
      Run r = Run::of(0);
      int run_labels[kRun];  // all loaded before any is used: kRun loads in flight, not one
#pragma unroll
      for (int u = 0; u < kRun; ++u) run_labels[u] = k0 + u < k1 ? lab_row[(k0 + u) * labels.strides[2]] : 0;
#pragma unroll
      for (int u = 0; u < kRun; ++u) {  // unrolled, so that run_labels stays in registers
        const int k = k0 + u, l = run_labels[u];
        if (k >= k1) break;
        if (l != r.label) {
          if (r.voxels) add_run(r, img != nullptr, acc, box);
          r = Run::of(l);
        }
        if (l <= 0 || l > count) {
          if (l != 0) atomicAdd(acc + 1, 1.0);  // a label outside 1..count: counted in row 0 (the caller raises)
          continue;
        }
        r.add(i, j, k);
        if (img_row) r.add_value(double(img_row[k * image.strides[2]]));
      }
      add_warp_runs(r, img != nullptr, acc, box, carry);
    }
  }
  add_carried_runs(carries, img != nullptr, acc, box);
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
  const unsigned blocks = grid_dim((rows + kRowsPerBlock - 1) / kRowsPerBlock, resident_blocks(int(threads.x * threads.y)));
  const int32_t* lab = static_cast<const int32_t*>(labels.data);
  init_stats(count + 1, acc, box, stream);
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
