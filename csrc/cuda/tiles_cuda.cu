// CUDA twins of cpu/tiles_cpu.cpp.
#include <string>
#include <type_traits>

#include "cuda/common.cuh"
#include "petfast/ops.h"

namespace petfast {
namespace {

// The kernels give each row of `width` elements a line of threads (threadIdx.x along the row) and
// kRowsPerBlock rows to a CUDA block: one row of 128 floats per block was too little work per block
// (gather at 0.87 TB/s on an H200).
constexpr int kRowsPerBlock = 4;
unsigned int row_blocks(int64_t rows, const char* what) {
  require(rows < (int64_t(1) << 31), std::string(what) + ": too many rows for one launch");
  return unsigned((rows + kRowsPerBlock - 1) / kRowsPerBlock);
}
dim3 row_threads(int64_t width) { return dim3(width >= 128 ? 128 : 64, kRowsPerBlock); }
__device__ __forceinline__ int64_t block_row() { return int64_t(blockIdx.x) * blockDim.y + threadIdx.y; }

// A line of threads per output row (b, c, z, y), along x: reads and writes are coalesced and the
// index arithmetic is per row, not per element.
template <typename Tin, typename Tout>
__global__ void gather_kernel(const Tin* __restrict__ in, NdView src, Tout* __restrict__ out, NdView dst, TileOrigins o,
                              Tout fill) {
  const int64_t C = src.shape[0], d = dst.shape[2], h = dst.shape[3], w = dst.shape[4];
  const int64_t row = block_row();
  if (row >= dst.shape[0] * C * d * h) return;
  const int64_t y = row % h, z = (row / h) % d, c = (row / (h * d)) % C, b = row / (h * d * C);
  const int64_t Z = o.at[b][0] + z, Y = o.at[b][1] + y, X0 = o.at[b][2];
  const bool row_inside = Z >= 0 && Z < src.shape[1] && Y >= 0 && Y < src.shape[2];
  const Tin* src_row = in + c * src.strides[0] + Z * src.strides[1] + Y * src.strides[2];
  Tout* dst_row = out + b * dst.strides[0] + c * dst.strides[1] + z * dst.strides[2] + y * dst.strides[3];
  for (int64_t x = threadIdx.x; x < w; x += blockDim.x) {
    const int64_t X = X0 + x;
    dst_row[x * dst.strides[4]] =
        row_inside && X >= 0 && X < src.shape[3] ? static_cast<Tout>(src_row[X * src.strides[3]]) : fill;
  }
}

// One tile per launch (tiles overlap; launches on one stream do not), a line of threads per row
// (z, y) of the tile, all channels: plain read-modify-write, no atomics, the CPU twin's sums.
__global__ void accumulate_kernel(const float* __restrict__ t, NdView tiles, int64_t b, const float* __restrict__ g,
                                  NdView gmap, TileOrigins o, float* a, NdView acc, float* wsum, NdView weight) {
  const int64_t C = tiles.shape[1], h = tiles.shape[3], w = tiles.shape[4];
  const int64_t row = block_row();
  if (row >= tiles.shape[2] * h) return;
  const int64_t y = row % h, z = row / h;
  const int64_t Z = o.at[b][0] + z, Y = o.at[b][1] + y, X0 = o.at[b][2];
  const float* g_row = g + z * gmap.strides[0] + y * gmap.strides[1];
  float* w_row = wsum + Z * weight.strides[0] + Y * weight.strides[1] + X0 * weight.strides[2];
  for (int64_t x = threadIdx.x; x < w; x += blockDim.x) {
    const float gv = g_row[x * gmap.strides[2]];
    w_row[x * weight.strides[2]] += gv;
    for (int64_t c = 0; c < C; ++c) {
      const float v = t[b * tiles.strides[0] + c * tiles.strides[1] + z * tiles.strides[2] + y * tiles.strides[3] +
                        x * tiles.strides[4]];
      a[c * acc.strides[0] + Z * acc.strides[1] + Y * acc.strides[2] + (X0 + x) * acc.strides[3]] += v * gv;
    }
  }
}

// A line of threads per row (z, y), along x.
__global__ void finalize_kernel(const float* __restrict__ a, NdView acc, uint8_t* l, NdView labels) {
  const int64_t C = acc.shape[0], H = acc.shape[2], W = acc.shape[3];
  const int64_t row = block_row();
  if (row >= acc.shape[1] * H) return;
  const int64_t y = row % H, z = row / H;
  for (int64_t x = threadIdx.x; x < W; x += blockDim.x) {
    const float* v = a + z * acc.strides[1] + y * acc.strides[2] + x * acc.strides[3];
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
    l[z * labels.strides[0] + y * labels.strides[1] + x * labels.strides[2]] = best;
  }
}

}  // namespace

void gather_tiles_cuda(const NdView& src, const NdView& dst, const TileOrigins& origins, double pad, uintptr_t s) {
  DeviceGuard guard(src.device);
  auto stream = reinterpret_cast<cudaStream_t>(s);
  const unsigned blocks = row_blocks(dst.shape[0] * dst.shape[1] * dst.shape[2] * dst.shape[3], "gather tiles");
  const dim3 threads = row_threads(dst.shape[4]);
  dispatch_dtype(src.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    if (dst.dtype == src.dtype) {
      gather_kernel<T, T><<<blocks, threads, 0, stream>>>(
          static_cast<const T*>(src.data), src, static_cast<T*>(dst.data), dst, origins, static_cast<T>(pad));
    } else {
      gather_kernel<T, float><<<blocks, threads, 0, stream>>>(
          static_cast<const T*>(src.data), src, static_cast<float*>(dst.data), dst, origins, float(pad));
    }
  });
  cuda_check(cudaGetLastError(), "gather tiles launch");
}

void accumulate_tiles_cuda(const NdView& tiles, const NdView& weight_map, const TileOrigins& origins, const NdView& acc,
                           const NdView& weight, uintptr_t s) {
  DeviceGuard guard(tiles.device);
  auto stream = reinterpret_cast<cudaStream_t>(s);
  const unsigned blocks = row_blocks(tiles.shape[2] * tiles.shape[3], "accumulate tiles");
  const dim3 threads = row_threads(tiles.shape[4]);
  for (int b = 0; b < origins.count; ++b) {
    accumulate_kernel<<<blocks, threads, 0, stream>>>(
        static_cast<const float*>(tiles.data), tiles, b, static_cast<const float*>(weight_map.data), weight_map, origins,
        static_cast<float*>(acc.data), acc, static_cast<float*>(weight.data), weight);
  }
  cuda_check(cudaGetLastError(), "accumulate tiles launch");
}

void finalize_tiles_cuda(const NdView& acc, const NdView& labels, uintptr_t s) {
  DeviceGuard guard(acc.device);
  auto stream = reinterpret_cast<cudaStream_t>(s);
  finalize_kernel<<<row_blocks(acc.shape[1] * acc.shape[2], "finalize tiles"), row_threads(acc.shape[3]), 0, stream>>>(
      static_cast<const float*>(acc.data), acc, static_cast<uint8_t*>(labels.data), labels);
  cuda_check(cudaGetLastError(), "finalize tiles launch");
}

}  // namespace petfast
