// CUDA twin of cpu/resample_cpu.cpp: one thread per output voxel (a 3-D grid, so no index division),
// consecutive threads along the
// output's smallest-stride axis so that writes coalesce and neighbouring reads share cache lines.
// Source coordinates are computed in double (exact index mapping, same as the CPU), weights in float.
#include <algorithm>
#include <cstdlib>

#include "cuda/common.cuh"
#include "petfast/interp.h"
#include "petfast/ops.h"

namespace petfast {
namespace {

// The kernel sees the destination with its axes reordered as (outer, mid, inner) by decreasing
// stride, and the index map's columns reordered to match, so that it never indexes a small array
// with a run-time value (that would put the array in slow local memory).
template <typename Tin, typename Tout, int Order>
__global__ void resample_kernel(const Tin* __restrict__ in, Volume src, Tout* __restrict__ out, Volume dst,
                                ResampleArgs a) {
  const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t m = int64_t(blockIdx.y) * blockDim.y + threadIdx.y;
  if (n >= dst.shape[2] || m >= dst.shape[1]) return;
  for (int64_t o = blockIdx.z; o < dst.shape[0]; o += gridDim.z) {
    Tout* dst_voxel = out + o * dst.strides[0] + m * dst.strides[1] + n * dst.strides[2];
    double x = map_coord(a.map, 0, o, m, n), y = map_coord(a.map, 1, o, m, n), z = map_coord(a.map, 2, o, m, n);
    if (!(inside(x, src.shape[0]) && inside(y, src.shape[1]) && inside(z, src.shape[2]))) {
      *dst_voxel = static_cast<Tout>(a.fill);
      continue;
    }
    if constexpr (Order == 0) {
      *dst_voxel = sample_nearest(in, src.shape, src.strides, x, y, z);
    } else if constexpr (Order == 1) {
      *dst_voxel = sample_linear(in, src.shape, src.strides, x, y, z);
    } else {
      *dst_voxel = sample_cubic(reinterpret_cast<const float*>(in), src.shape, src.strides, x, y, z);
    }
  }
}

template <typename Tin, typename Tout, int Order>
void launch(const Volume& src, const Volume& dst, const ResampleArgs& a, cudaStream_t stream) {
  int ax[3];
  axes_by_stride(dst.strides, ax);
  Volume loop_dst = dst;
  ResampleArgs loop_args = a;
  loop_args.map = map_in_loop_order(a.map, ax);
  for (int l = 0; l < 3; ++l) {
    loop_dst.shape[l] = dst.shape[ax[l]];
    loop_dst.strides[l] = dst.strides[ax[l]];
  }
  // 32 threads along the inner axis (one coalesced row segment per warp), 8 rows of the middle axis.
  const dim3 threads(32, 8);
  const dim3 grid(grid_dim((loop_dst.shape[2] + 31) / 32, 0x7fffffff), grid_dim((loop_dst.shape[1] + 7) / 8, 65535),
                  grid_dim(loop_dst.shape[0], 65535));
  resample_kernel<Tin, Tout, Order><<<grid, threads, 0, stream>>>(
      static_cast<const Tin*>(src.data), src, static_cast<Tout*>(dst.data), loop_dst, loop_args);
  cuda_check(cudaGetLastError(), "resample kernel launch");
}

}  // namespace

void resample_cuda(const Volume& src, const Volume& dst, const ResampleArgs& a, uintptr_t stream_handle) {
  DeviceGuard guard(src.device);
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  dispatch_dtype(src.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    if (a.order == 0) {
      launch<T, T, 0>(src, dst, a, stream);
    } else if (a.order == 1) {
      launch<T, float, 1>(src, dst, a, stream);
    } else if constexpr (std::is_same_v<T, float>) {
      launch<float, float, 3>(src, dst, a, stream);
    } else {
      throw std::invalid_argument("order 3 samples float32 B-spline coefficients");
    }
  });
}

}  // namespace petfast
