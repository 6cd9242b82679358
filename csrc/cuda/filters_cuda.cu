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

// coef = src as float32, edge-padded by (coef's shape - src's shape) / 2 per axis.
template <typename T>
__global__ void to_float_kernel(const T* __restrict__ in, Volume src, float* __restrict__ out, Volume coef) {
  const int64_t n = coef.size(), n12 = coef.shape[1] * coef.shape[2];
  const int64_t p0 = (coef.shape[0] - src.shape[0]) / 2, p1 = (coef.shape[1] - src.shape[1]) / 2,
                p2 = (coef.shape[2] - src.shape[2]) / 2;
  for (int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; p < n; p += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = p / n12, r = p % n12, j = r / coef.shape[2], k = r % coef.shape[2];
    const int64_t si = min(max(i - p0, int64_t(0)), src.shape[0] - 1), sj = min(max(j - p1, int64_t(0)), src.shape[1] - 1),
                  sk = min(max(k - p2, int64_t(0)), src.shape[2] - 1);
    out[p] = float(in[si * src.strides[0] + sj * src.strides[1] + sk * src.strides[2]]);
  }
}

// Lines along `axis` of a C-contiguous float32 volume; consecutive threads take neighbouring lines,
// which for axes 0 and 1 are neighbours in memory, so each step of the recursion coalesces.
// Small arrays are picked from with selects, never indexed at run time (that would use local memory).
__device__ __forceinline__ int64_t pick(const int64_t* v, int a) { return a == 0 ? v[0] : (a == 1 ? v[1] : v[2]); }

__global__ void bspline_axis_kernel(float* c, Volume v, int axis) {
  const int a1 = axis == 0 ? 1 : 0, a2 = axis == 2 ? 1 : 2;
  const int64_t n1 = pick(v.shape, a1), n2 = pick(v.shape, a2), s1 = pick(v.strides, a1), s2 = pick(v.strides, a2);
  const int64_t len = pick(v.shape, axis), step = pick(v.strides, axis), lines = n1 * n2;
  for (int64_t l = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; l < lines; l += int64_t(gridDim.x) * blockDim.x) {
    bspline_filter_line(c + (l / n2) * s1 + (l % n2) * s2, len, step);
  }
}

template <typename T>
__global__ void convolve_kernel(const T* __restrict__ in, Volume src, float* __restrict__ out, Volume dst, int axis,
                                Taps taps) {
  const int64_t n = dst.size(), n12 = dst.shape[1] * dst.shape[2], len = pick(dst.shape, axis);
  const int64_t step = pick(src.strides, axis);
  for (int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; p < n; p += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = p / n12, j = (p % n12) / dst.shape[2], k = p % dst.shape[2];
    const int64_t pos = axis == 0 ? i : (axis == 1 ? j : k);
    const T* base = in + i * src.strides[0] + j * src.strides[1] + k * src.strides[2] - pos * step;
    float acc = 0.f;
    for (int t = -taps.radius; t <= taps.radius; ++t) {
      int64_t q = pos + t;
      q = q < 0 ? 0 : (q > len - 1 ? len - 1 : q);
      acc += taps.w[t + taps.radius] * float(base[q * step]);
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
      to_float_kernel<T><<<blocks_for(coef.size(), threads), threads, 0, stream>>>(static_cast<const T*>(src.data), src, c,
                                                                                coef);
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
