// CUDA twins of cpu/tiles_cpu.cpp.
#include <string>
#include <type_traits>

#include "cuda/common.cuh"
#include "petfast/ops.h"

namespace petfast {
namespace {

// Work layout of the three kernels: one warp per row of elements along x (the lanes 32 elements
// apart, coalesced), kWarps rows (y) per CUDA block, and the outer indices straight from the grid
// (blockIdx.y: z; blockIdx.z: tile and channel), so that no thread divides. 64-bit division is
// emulated on the GPU: one 128-element row per block with four 64-bit divisions per element left
// the gather instruction-bound (0.87 TB/s on an H200, a quarter of a device-to-device copy).
constexpr int kWarps = 8;
constexpr int kUnroll = 4;  // elements per lane loaded before any is stored: loads in flight
const dim3 kBlock(32, kWarps);

dim3 row_grid(int64_t rows, int64_t planes, int64_t stacks, const char* what) {
  require(planes <= 65535 && stacks <= 65535,
          std::string(what) + ": at most 65535 planes and 65535 tiles x channels per launch");
  return dim3(unsigned((rows + kWarps - 1) / kWarps), unsigned(std::max<int64_t>(planes, 1)),
              unsigned(std::max<int64_t>(stacks, 1)));
}

template <typename Tin, typename Tout>
__global__ void gather_kernel(const Tin* __restrict__ in, NdView src, Tout* __restrict__ out, NdView dst, TileOrigins o,
                              Tout fill) {
  const int64_t y = int64_t(blockIdx.x) * kWarps + threadIdx.y;
  if (y >= dst.shape[3]) return;
  const int64_t z = blockIdx.y;
  const unsigned C = unsigned(src.shape[0]), b = blockIdx.z / C, c = blockIdx.z - b * C;
  const int64_t Z = o.at[b][0] + z, Y = o.at[b][1] + y, X0 = o.at[b][2], w = dst.shape[4];
  const bool row_inside = Z >= 0 && Z < src.shape[1] && Y >= 0 && Y < src.shape[2];
  const Tin* src_row = in + c * src.strides[0] + Z * src.strides[1] + Y * src.strides[2];
  Tout* dst_row = out + b * dst.strides[0] + c * dst.strides[1] + z * dst.strides[2] + y * dst.strides[3];
  const int64_t sx = src.strides[3], dx = dst.strides[4];
  for (int64_t x0 = threadIdx.x; x0 < w; x0 += 32 * kUnroll) {
    Tout v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t x = x0 + 32 * u, X = X0 + x;
      v[u] = x < w && row_inside && X >= 0 && X < src.shape[3] ? static_cast<Tout>(src_row[X * sx]) : fill;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
      if (x0 + 32 * u < w) dst_row[(x0 + 32 * u) * dx] = v[u];
  }
}

// One tile per launch (tiles overlap; launches on one stream do not), all channels of a row per
// warp: plain read-modify-write, no atomics, the CPU twin's sums. As in the gather, each lane loads
// kUnroll elements of a channel before it stores any (the accumulator and the weights are distinct
// arrays, so the loads need not wait for the stores).
__global__ void accumulate_kernel(const float* __restrict__ t, NdView tiles, int b, const float* __restrict__ g,
                                  NdView gmap, TileOrigins o, float* __restrict__ a, NdView acc,
                                  float* __restrict__ wsum, NdView weight) {
  const int64_t y = int64_t(blockIdx.x) * kWarps + threadIdx.y;
  if (y >= tiles.shape[3]) return;
  const int64_t z = blockIdx.y, C = tiles.shape[1], w = tiles.shape[4];
  const int64_t Z = o.at[b][0] + z, Y = o.at[b][1] + y, X0 = o.at[b][2];
  const float* g_row = g + z * gmap.strides[0] + y * gmap.strides[1];
  const float* t_row = t + b * tiles.strides[0] + z * tiles.strides[2] + y * tiles.strides[3];
  float* a_row = a + Z * acc.strides[1] + Y * acc.strides[2] + X0 * acc.strides[3];
  float* w_row = wsum + Z * weight.strides[0] + Y * weight.strides[1] + X0 * weight.strides[2];
  for (int64_t x0 = threadIdx.x; x0 < w; x0 += 32 * kUnroll) {
    float gv[kUnroll], old[kUnroll], tv[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t x = x0 + 32 * u;
      gv[u] = x < w ? g_row[x * gmap.strides[2]] : 0.f;
      old[u] = x < w ? w_row[x * weight.strides[2]] : 0.f;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
      if (x0 + 32 * u < w) w_row[(x0 + 32 * u) * weight.strides[2]] = old[u] + gv[u];
    for (int64_t c = 0; c < C; ++c) {
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t x = x0 + 32 * u;
        tv[u] = x < w ? t_row[c * tiles.strides[1] + x * tiles.strides[4]] : 0.f;
        old[u] = x < w ? a_row[c * acc.strides[0] + x * acc.strides[3]] : 0.f;
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
        if (x0 + 32 * u < w) a_row[c * acc.strides[0] + (x0 + 32 * u) * acc.strides[3]] = old[u] + tv[u] * gv[u];
    }
  }
}

__global__ void finalize_kernel(const float* __restrict__ a, NdView acc, uint8_t* l, NdView labels) {
  const int64_t y = int64_t(blockIdx.x) * kWarps + threadIdx.y;
  if (y >= acc.shape[2]) return;
  const int64_t z = blockIdx.y, C = acc.shape[0], W = acc.shape[3];
  const float* a_row = a + z * acc.strides[1] + y * acc.strides[2];
  uint8_t* l_row = l + z * labels.strides[0] + y * labels.strides[1];
  for (int64_t x = threadIdx.x; x < W; x += 32) {
    const float* v = a_row + x * acc.strides[3];
    uint8_t best = 0;
    if (C == 1) {
      best = v[0] > 0.f;
    } else {
      float best_v = v[0];
      for (int64_t c = 1; c < C; ++c) {
        const float vc = v[c * acc.strides[0]];
        if (vc > best_v) {
          best_v = vc;
          best = uint8_t(c);
        }
      }
    }
    l_row[x * labels.strides[2]] = best;
  }
}

}  // namespace

void gather_tiles_cuda(const NdView& src, const NdView& dst, const TileOrigins& origins, double pad, uintptr_t s) {
  DeviceGuard guard(src.device);
  auto stream = reinterpret_cast<cudaStream_t>(s);
  if (dst.size() == 0) return;  // no tiles: the grid's minimum of one block would write out of bounds
  const dim3 grid = row_grid(dst.shape[3], dst.shape[2], dst.shape[0] * dst.shape[1], "gather tiles");
  dispatch_dtype(src.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    if (dst.dtype == src.dtype) {
      gather_kernel<T, T><<<grid, kBlock, 0, stream>>>(
          static_cast<const T*>(src.data), src, static_cast<T*>(dst.data), dst, origins, static_cast<T>(pad));
    } else {
      gather_kernel<T, float><<<grid, kBlock, 0, stream>>>(
          static_cast<const T*>(src.data), src, static_cast<float*>(dst.data), dst, origins, float(pad));
    }
  });
  cuda_check(cudaGetLastError(), "gather tiles launch");
}

void accumulate_tiles_cuda(const NdView& tiles, const NdView& weight_map, const TileOrigins& origins, const NdView& acc,
                           const NdView& weight, uintptr_t s) {
  DeviceGuard guard(tiles.device);
  auto stream = reinterpret_cast<cudaStream_t>(s);
  if (tiles.size() == 0) return;
  const dim3 grid = row_grid(tiles.shape[3], tiles.shape[2], 1, "accumulate tiles");
  for (int b = 0; b < origins.count; ++b) {
    accumulate_kernel<<<grid, kBlock, 0, stream>>>(
        static_cast<const float*>(tiles.data), tiles, b, static_cast<const float*>(weight_map.data), weight_map, origins,
        static_cast<float*>(acc.data), acc, static_cast<float*>(weight.data), weight);
  }
  cuda_check(cudaGetLastError(), "accumulate tiles launch");
}

void finalize_tiles_cuda(const NdView& acc, const NdView& labels, uintptr_t s) {
  DeviceGuard guard(acc.device);
  auto stream = reinterpret_cast<cudaStream_t>(s);
  if (acc.size() == 0) return;
  finalize_kernel<<<row_grid(acc.shape[2], acc.shape[1], 1, "finalize tiles"), kBlock, 0, stream>>>(
      static_cast<const float*>(acc.data), acc, static_cast<uint8_t*>(labels.data), labels);
  cuda_check(cudaGetLastError(), "finalize tiles launch");
}

}  // namespace petfast
