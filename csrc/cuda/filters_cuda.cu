// CUDA twins of cpu/filters_cpu.cpp: cubic B-spline prefilter (one thread per line, in place on the
// float32 coefficient buffer) and 1-D convolution along an axis (one thread per output voxel).
#include <vector>

#include "cuda/common.cuh"
#include "petfast/interp.h"
#include "petfast/ops.h"

namespace petfast {
namespace {

constexpr int kMaxTaps = 257;
struct Taps {
  float w[kMaxTaps];
  int radius;
};

template <typename T>
__global__ void to_float_kernel(const T* __restrict__ in, Volume src, float* __restrict__ out) {
  const int64_t n = src.size(), n12 = src.shape[1] * src.shape[2];
  for (int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; p < n; p += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = p / n12, r = p % n12, j = r / src.shape[2], k = r % src.shape[2];
    out[p] = float(in[i * src.strides[0] + j * src.strides[1] + k * src.strides[2]]);
  }
}

// Lines along `axis` of a C-contiguous float32 volume; consecutive threads take neighbouring lines,
// which for axes 0 and 1 are neighbours in memory, so each step of the recursion coalesces.
__global__ void bspline_axis_kernel(float* c, Volume v, int axis) {
  const int a1 = axis == 0 ? 1 : 0, a2 = axis == 2 ? 1 : 2;
  const int64_t lines = v.shape[a1] * v.shape[a2];
  for (int64_t l = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; l < lines; l += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = l / v.shape[a2], q = l % v.shape[a2];
    bspline_filter_line(c + p * v.strides[a1] + q * v.strides[a2], v.shape[axis], v.strides[axis]);
  }
}

template <typename T>
__global__ void convolve_kernel(const T* __restrict__ in, Volume src, float* __restrict__ out, Volume dst, int axis,
                                Taps taps) {
  const int64_t n = dst.size(), n12 = dst.shape[1] * dst.shape[2], len = dst.shape[axis];
  for (int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; p < n; p += int64_t(gridDim.x) * blockDim.x) {
    int64_t idx[3] = {p / n12, (p % n12) / dst.shape[2], p % dst.shape[2]};
    const int64_t pos = idx[axis];
    const T* base = in + idx[0] * src.strides[0] + idx[1] * src.strides[1] + idx[2] * src.strides[2] -
                    pos * src.strides[axis];
    float acc = 0.f;
    for (int t = -taps.radius; t <= taps.radius; ++t) {
      int64_t q = pos + t;
      q = q < 0 ? 0 : (q > len - 1 ? len - 1 : q);
      acc += taps.w[t + taps.radius] * float(base[q * src.strides[axis]]);
    }
    out[p] = acc;
  }
}

unsigned int blocks_for(int64_t n, int threads) { return grid_dim((n + threads - 1) / threads, 1 << 20); }

}  // namespace

void bspline_prefilter_cuda(const Volume& src, const Volume& coef, uintptr_t stream_handle) {
  DeviceGuard guard(src.device);
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  float* c = static_cast<float*>(coef.data);
  const int threads = 256;
  if (src.data != coef.data) {
    dispatch_dtype(src.dtype, [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      to_float_kernel<T><<<blocks_for(src.size(), threads), threads, 0, stream>>>(static_cast<const T*>(src.data), src, c);
    });
    cuda_check(cudaGetLastError(), "B-spline conversion launch");
  }
  for (int axis = 2; axis >= 0; --axis) {  // same order as the CPU twin
    const int64_t lines = coef.size() / coef.shape[axis];
    bspline_axis_kernel<<<blocks_for(lines, 128), 128, 0, stream>>>(c, coef, axis);
    cuda_check(cudaGetLastError(), "B-spline prefilter launch");
  }
}

void convolve_axis_cuda(const Volume& src, const Volume& dst, int axis, const std::vector<float>& taps,
                        uintptr_t stream_handle) {
  DeviceGuard guard(src.device);
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  Taps t{};
  t.radius = int(taps.size() / 2);
  for (size_t q = 0; q < taps.size(); ++q) t.w[q] = taps[q];
  const int threads = 256;
  dispatch_dtype(src.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    convolve_kernel<T><<<blocks_for(dst.size(), threads), threads, 0, stream>>>(
        static_cast<const T*>(src.data), src, static_cast<float*>(dst.data), dst, axis, t);
  });
  cuda_check(cudaGetLastError(), "convolution launch");
}

}  // namespace petfast
