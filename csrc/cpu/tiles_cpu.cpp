// CPU twins of cuda/tiles_cuda.cu: gather tiles into a batch, accumulate weighted tile predictions,
// and the final argmax. Rows of a tile are independent, so each tile's rows run in parallel; tiles
// are accumulated one after another (they overlap), which also keeps the sums deterministic.
#include <algorithm>
#include <cstring>
#include <type_traits>

#include "petfast/ops.h"
#include "petfast/parallel.h"

namespace petfast {
namespace {

template <typename Tin, typename Tout>
void gather_typed(const NdView& src, const NdView& dst, const TileOrigins& o, double pad) {
  const Tin* in = static_cast<const Tin*>(src.data);
  Tout* out = static_cast<Tout*>(dst.data);
  const int64_t C = src.shape[0], d = dst.shape[2], h = dst.shape[3], w = dst.shape[4];
  const Tout fill = static_cast<Tout>(pad);
  const int64_t ds = dst.strides[4], ss = src.strides[3];
  // One (tile, channel, z) plane of rows per work item: index arithmetic per row stays additions.
  parallel_for(o.count * C * d, 4, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t z = p % d, c = (p / d) % C, b = p / (d * C);
      const int64_t Z = o.at[b][0] + z, X0 = o.at[b][2];
      const bool plane_in = Z >= 0 && Z < src.shape[1];
      // The part of a row inside the volume is a straight copy; only the ends are padding.
      const int64_t lo = std::min<int64_t>(w, std::max<int64_t>(0, -X0));
      const int64_t hi = std::max<int64_t>(lo, std::min<int64_t>(w, src.shape[3] - X0));
      for (int64_t y = 0; y < h; ++y) {
        const int64_t Y = o.at[b][1] + y;
        Tout* row = out + b * dst.strides[0] + c * dst.strides[1] + z * dst.strides[2] + y * dst.strides[3];
        const bool row_in = plane_in && Y >= 0 && Y < src.shape[2];
        const int64_t a = row_in ? lo : w, e = row_in ? hi : w;
        // Rows outside the volume copy nothing (a == e).
        const Tin* from = row_in ? in + c * src.strides[0] + Z * src.strides[1] + Y * src.strides[2] + X0 * ss : in;
        if (ds == 1 && ss == 1) {
          std::fill(row, row + a, fill);
          if (e > a) {
            if (std::is_same<Tin, Tout>::value) std::memcpy(row + a, from + a, (e - a) * sizeof(Tout));
            else std::copy(from + a, from + e, row + a);  // converts
          }
          std::fill(row + e, row + w, fill);
        } else {
          for (int64_t x = 0; x < a; ++x) row[x * ds] = fill;
          for (int64_t x = a; x < e; ++x) row[x * ds] = static_cast<Tout>(from[x * ss]);
          for (int64_t x = e; x < w; ++x) row[x * ds] = fill;
        }
      }
    }
  });
}

}  // namespace

void gather_tiles_cpu(const NdView& src, const NdView& dst, const TileOrigins& origins, double pad) {
  dispatch_dtype(src.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    if (dst.dtype == src.dtype) gather_typed<T, T>(src, dst, origins, pad);
    else gather_typed<T, float>(src, dst, origins, pad);
  });
}

void accumulate_tiles_cpu(const NdView& tiles, const NdView& weight_map, const TileOrigins& o, const NdView& acc,
                          const NdView& weight) {
  const float* t = static_cast<const float*>(tiles.data);
  const float* g = static_cast<const float*>(weight_map.data);
  float* a = static_cast<float*>(acc.data);
  float* wsum = static_cast<float*>(weight.data);
  const int64_t C = tiles.shape[1], d = tiles.shape[2], h = tiles.shape[3], w = tiles.shape[4];
  for (int b = 0; b < o.count; ++b) {
    parallel_for(d * h, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t z = r / h, y = r % h, Z = o.at[b][0] + z, Y = o.at[b][1] + y, X0 = o.at[b][2];
        const float* grow = g + z * weight_map.strides[0] + y * weight_map.strides[1];
        float* wrow = wsum + Z * weight.strides[0] + Y * weight.strides[1] + X0 * weight.strides[2];
        for (int64_t x = 0; x < w; ++x) wrow[x * weight.strides[2]] += grow[x * weight_map.strides[2]];
        for (int64_t c = 0; c < C; ++c) {
          const float* trow = t + b * tiles.strides[0] + c * tiles.strides[1] + z * tiles.strides[2] + y * tiles.strides[3];
          float* arow = a + c * acc.strides[0] + Z * acc.strides[1] + Y * acc.strides[2] + X0 * acc.strides[3];
          for (int64_t x = 0; x < w; ++x)
            arow[x * acc.strides[3]] += trow[x * tiles.strides[4]] * grow[x * weight_map.strides[2]];
        }
      }
    });
  }
}

void finalize_tiles_cpu(const NdView& acc, const NdView& labels) {
  const float* a = static_cast<const float*>(acc.data);
  uint8_t* l = static_cast<uint8_t*>(labels.data);
  const int64_t C = acc.shape[0], D = acc.shape[1], H = acc.shape[2], W = acc.shape[3];
  parallel_for(D * H, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t z = r / H, y = r % H;
      const float* base = a + z * acc.strides[1] + y * acc.strides[2];
      uint8_t* out = l + z * labels.strides[0] + y * labels.strides[1];
      for (int64_t x = 0; x < W; ++x) {
        const float* v = base + x * acc.strides[3];
        if (C == 1) {
          out[x * labels.strides[2]] = v[0] > 0.f;
          continue;
        }
        int best = 0;
        float best_v = v[0];
        for (int64_t c = 1; c < C; ++c) {
          const float vc = v[c * acc.strides[0]];
          if (vc > best_v) {  // ties keep the first channel, as numpy and torch argmax
            best_v = vc;
            best = int(c);
          }
        }
        out[x * labels.strides[2]] = uint8_t(best);
      }
    }
  });
}

}  // namespace petfast
