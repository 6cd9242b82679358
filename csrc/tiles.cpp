// Argument checks and CPU/CUDA dispatch for the sliding-window tile ops (gather, accumulate, finalize).
#include <string>

#include "petfast/ops.h"

namespace petfast {
namespace {

void same_device(const NdView& a, const NdView& b, const char* what) {
  require(a.device == b.device, std::string(what) + ": arrays live on different devices");
}

}  // namespace

void gather_tiles(const NdView& src, const NdView& dst, const TileOrigins& o, double pad, uintptr_t stream) {
  require(src.ndim == 4 && dst.ndim == 5, "gather_tiles: source (C, D, H, W) and batch (B, C, d, h, w)");
  require(dst.shape[0] == o.count && dst.shape[1] == src.shape[0], "gather_tiles: batch shape does not match");
  require(dst.dtype == src.dtype || dst.dtype == DType::Float32, "gather_tiles: batch dtype is float32 or the source's");
  same_device(src, dst, "gather_tiles");
  if (src.on_cuda()) {
#ifdef PETFAST_WITH_CUDA
    return gather_tiles_cuda(src, dst, o, pad, stream);
#else
    no_cuda();
#endif
  }
  gather_tiles_cpu(src, dst, o, pad);
}

void accumulate_tiles(const NdView& tiles, const NdView& weight_map, const TileOrigins& o, const NdView& acc,
                      const NdView& weight, uintptr_t stream) {
  require(tiles.ndim == 5 && weight_map.ndim == 3 && acc.ndim == 4 && weight.ndim == 3,
          "accumulate_tiles: tiles (B, C, d, h, w), weight map (d, h, w), accumulator (C, D, H, W), weights (D, H, W)");
  for (const NdView* v : {&tiles, &weight_map, &acc, &weight})
    require(v->dtype == DType::Float32, "accumulate_tiles: all arrays are float32");
  require(tiles.shape[0] == o.count && tiles.shape[1] == acc.shape[0], "accumulate_tiles: tile batch does not match");
  for (int a = 0; a < 3; ++a) {
    require(weight_map.shape[a] == tiles.shape[2 + a], "accumulate_tiles: weight map and tiles differ in shape");
    require(weight.shape[a] == acc.shape[1 + a], "accumulate_tiles: weights and accumulator differ in shape");
  }
  for (int b = 0; b < o.count; ++b)
    for (int a = 0; a < 3; ++a)
      require(o.at[b][a] >= 0 && o.at[b][a] + tiles.shape[2 + a] <= acc.shape[1 + a],
              "accumulate_tiles: tile " + std::to_string(b) + " reaches outside the volume");
  same_device(tiles, acc, "accumulate_tiles");
  same_device(weight_map, acc, "accumulate_tiles");
  same_device(weight, acc, "accumulate_tiles");
  if (acc.on_cuda()) {
#ifdef PETFAST_WITH_CUDA
    return accumulate_tiles_cuda(tiles, weight_map, o, acc, weight, stream);
#else
    no_cuda();
#endif
  }
  accumulate_tiles_cpu(tiles, weight_map, o, acc, weight);
}

void finalize_tiles(const NdView& acc, const NdView& labels, uintptr_t stream) {
  require(acc.ndim == 4 && labels.ndim == 3 && acc.dtype == DType::Float32 && labels.dtype == DType::UInt8,
          "finalize_tiles: float32 accumulator (C, D, H, W) and uint8 labels (D, H, W)");
  require(acc.shape[0] >= 1 && acc.shape[0] <= 256, "finalize_tiles: 1 to 256 channels");
  for (int a = 0; a < 3; ++a) require(labels.shape[a] == acc.shape[1 + a], "finalize_tiles: labels shape does not match");
  same_device(acc, labels, "finalize_tiles");
  if (acc.on_cuda()) {
#ifdef PETFAST_WITH_CUDA
    return finalize_tiles_cuda(acc, labels, stream);
#else
    no_cuda();
#endif
  }
  finalize_tiles_cpu(acc, labels);
}

}  // namespace petfast
