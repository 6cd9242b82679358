// CUDA twin of cpu/component_stats_cpu.cpp: one thread per voxel, atomics into the per-label rows.
#include "cuda/common.cuh"
#include "petfast/ops.h"

namespace petfast {
namespace {

__device__ void atomic_max_double(double* address, double v) {
  unsigned long long* p = reinterpret_cast<unsigned long long*>(address);
  unsigned long long old = *p;
  while (__longlong_as_double(old) < v) {
    const unsigned long long seen = atomicCAS(p, old, __double_as_longlong(v));
    if (seen == old) break;
    old = seen;
  }
}

template <typename T>
__global__ void stats_kernel(const int32_t* __restrict__ lab, Volume labels, const T* __restrict__ img, Volume image,
                             int64_t count, double* acc, int32_t* box) {
  const int64_t n = labels.size(), n12 = labels.shape[1] * labels.shape[2];
  for (int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; p < n; p += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = p / n12, j = (p / labels.shape[2]) % labels.shape[1], k = p % labels.shape[2];
    const int32_t l = lab[i * labels.strides[0] + j * labels.strides[1] + k * labels.strides[2]];
    if (l <= 0 || l > count) continue;
    double* a = acc + l * kStatsColumns;
    atomicAdd(a + 0, 1.0);
    atomicAdd(a + 1, double(i));
    atomicAdd(a + 2, double(j));
    atomicAdd(a + 3, double(k));
    if (img) {
      const double v = double(img[i * image.strides[0] + j * image.strides[1] + k * image.strides[2]]);
      atomicAdd(a + 4, v);
      atomic_max_double(a + 5, v);
    }
    int32_t* b = box + l * 6;
    atomicMin(b + 0, int(i));
    atomicMax(b + 1, int(i));
    atomicMin(b + 2, int(j));
    atomicMax(b + 3, int(j));
    atomicMin(b + 4, int(k));
    atomicMax(b + 5, int(k));
  }
}

}  // namespace

void component_stats_cuda(const Volume& labels, const Volume* image, int64_t count, double* acc, int32_t* box,
                          uintptr_t stream_handle) {
  DeviceGuard guard(labels.device);
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const int threads = 256;
  const unsigned blocks = grid_dim((labels.size() + threads - 1) / threads, 1 << 20);
  const int32_t* lab = static_cast<const int32_t*>(labels.data);
  if (!image) {
    stats_kernel<float><<<blocks, threads, 0, stream>>>(lab, labels, nullptr, labels, count, acc, box);
  } else {
    dispatch_dtype(image->dtype, [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      stats_kernel<T><<<blocks, threads, 0, stream>>>(lab, labels, static_cast<const T*>(image->data), *image, count,
                                                      acc, box);
    });
  }
  cuda_check(cudaGetLastError(), "component statistics launch");
}

}  // namespace petfast
