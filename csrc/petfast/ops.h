// Declarations of every op's CPU twin and CUDA kernel launcher. The dispatchers in csrc/<op>.cpp
// check arguments and pick one; the CUDA launchers exist only when PETFAST_WITH_CUDA is defined.
#pragma once
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "petfast/array.h"

namespace petfast {

// dst[i,j,k] = interpolate(src, m @ (i,j,k,1)), or fill outside the source extent (see interp.h).
// order 0: src and dst share a dtype. order 1: dst float32. order 3: src holds float32 B-spline
// coefficients (bspline_prefilter) and dst float32.
struct ResampleArgs {
  IndexMap map;
  int order = 1;
  double fill = 0.0;
};

void resample_cpu(const Volume& src, const Volume& dst, const ResampleArgs& args);
// coef (float32, C-contiguous) = cubic B-spline coefficients of src (mirror boundary). coef may be
// larger than src by 2 * pad voxels per axis: src padded by repeating its edge voxels (scipy's mode
// 'nearest' padding before its prefilter). In place when coef is src.
void bspline_prefilter_cpu(const Volume& src, const Volume& coef);
// dst (float32, C-contiguous) = src convolved along `axis` with odd-length taps, edge values repeated.
void convolve_axis_cpu(const Volume& src, const Volume& dst, int axis, const std::vector<float>& taps);

// Per-label statistics of int32 labels 1..count: acc is (count + 1) x kStatsColumns float64 rows
// (voxels, sum i, sum j, sum k, image sum, image max) and box (count + 1) x 6 int32 rows
// (min i, max i, min j, max j, min k, max k), filled by the op (the caller allocates them). Row 0
// belongs to no label: acc[0][0] counts the labelled voxels whose image value is NaN, acc[0][1] the
// voxels whose label is outside 0..count (neither is added to any row). image may be null.
constexpr int kStatsColumns = 6;

PF_HOST_DEVICE inline void init_stats_row(int64_t l, double* acc, int32_t* box) {
  for (int c = 0; c < 5; ++c) acc[l * kStatsColumns + c] = 0.0;
  acc[l * kStatsColumns + 5] = -HUGE_VAL;  // image max
  for (int c = 0; c < 6; c += 2) {
    box[l * 6 + c] = INT32_MAX;
    box[l * 6 + c + 1] = -1;
  }
}
void component_stats_cpu(const Volume& labels, const Volume* image, int64_t count, double* acc, int32_t* box);

// Statistics the labeller gathers while it writes the labels, saving component_stats' pass over
// them: the tables above with capacity + 1 rows, filled (rows 0..N) when the component count N is
// at most capacity; else left as they are, for the caller to run component_stats. image (the
// mask's shape and device) may be null.
struct LabelStats {
  const Volume* image = nullptr;
  double* acc = nullptr;
  int32_t* box = nullptr;
  int64_t capacity = 0;
};

// Connected components of src (0 = background; neighbours join when their values are equal) into
// dst (int32, contiguous in the walk order `order`: the axes of src from largest to smallest
// stride) and zeroed. Labels are 1..N, numbered by each component's first voxel in (i, j, k)
// raster order. Returns N. stats may be null.
int64_t label_cpu(const Volume& src, const Volume& dst, int connectivity, const int* order, const LabelStats* stats);

// out[v] = 0 where 1 <= labels[v] <= count and keep[labels[v]] is 0 (remove_small's last pass).
void drop_components_cpu(const Volume& labels, const uint8_t* keep, int64_t count, const Volume& out);

// The smallest and largest value of v (both NaN if v holds a NaN); v must not be empty.
void extremes_cpu(const Volume& v, double* lo, double* hi);

// dst (uint8, src's shape) = src != 0; returns whether src holds a value other than 0 and 1 (NaN too).
bool binary_mask_cpu(const Volume& src, const Volume& dst);

// Sliding-window tiles. gather: dst (B, C, d, h, w) = src (C, D, H, W) at each origin, `pad` outside
// the image; dst is float32 or src's dtype. accumulate: acc (C, D, H, W) += tile x weight_map and
// weight (D, H, W) += weight_map for each tile (float32; tiles must lie inside). finalize: labels
// (D, H, W) uint8 = argmax over C of acc (C == 1: acc > 0, i.e. sigmoid > 0.5); the division by the
// weight cannot change either, so it is skipped.
void gather_tiles_cpu(const NdView& src, const NdView& dst, const TileOrigins& origins, double pad);
void accumulate_tiles_cpu(const NdView& tiles, const NdView& weight_map, const TileOrigins& origins, const NdView& acc,
                          const NdView& weight);
void finalize_tiles_cpu(const NdView& acc, const NdView& labels);

// Instance normalisation fused with the residual sum and activation that follow it in nnU-Net's
// networks, for inference: out = act(gamma[c] * (x - mean) / sqrt(var + eps) + beta[c] + residual),
// act(v) = v >= 0 ? v : slope * v (slope 1: no activation), mean and biased variance of x per
// (n, c) over the spatial axes. x, residual (may be null) and out are (N, C, S) views, S the
// flattened spatial axes, in one layout: planar (S stride 1) or channels-last (C stride 1); one
// dtype, float32, float16 or bfloat16; out may alias x. gamma and beta: float32 (C). Statistics are
// accumulated in float64 about a per-plane shift (the plane's first value), so that a large mean
// does not cancel the variance.
void instance_norm_act_cpu(const NdView& x, const NdView* residual, const NdView& gamma, const NdView& beta,
                           const NdView& out, double eps, double slope);

// The decoder's transposed convolution (kernel == stride == factor) and skip concatenation, for
// channels-last inference on the CPU. rows (M, K), C-contiguous: one row per input voxel
// (n, z, y, x) in raster order, K = fa * fb * fc * Cu values ordered (a, b, c, channel): the
// transposed convolution's output for voxel (n, fa z + a, fb y + b, fc x + c). skip (N, Cs, D, H,
// W) and out (N, Cu + Cs, D, H, W) channels-last contiguous, D = fa Z, H = fb Y, W = fc X; one
// dtype. out[:, :Cu] = the rows' values, out[:, Cu:] = skip.
void upsample_concat_cpu(const NdView& rows, const NdView& skip, const NdView& out, const int64_t factor[3]);

#ifndef PETFAST_WITH_CUDA
// What a CUDA array meets in a build without the CUDA kernels.
[[noreturn]] inline void no_cuda() {
  throw std::invalid_argument("petfast was built without CUDA kernels; pass CPU arrays or install a CUDA build");
}
#endif

// Where the CUDA labeller keeps its buffers inside one int32 scratch array (offsets in int32
// entries; the buffers after the two flags each 16-byte aligned): a flag for masks whose 2x2x2
// blocks hold two values, a flag for masks with a value other than 1 (neighbouring blocks' values
// then need comparing), scan counts,
// then per 2x2x2 block its parent, its component's first voxel (later its label) and its occupancy
// bits, then a start flag bit per voxel, padded to whole scan blocks.
struct LabelScratchLayout {
  int64_t mixed, not_binary, counts, parent, first, occupancy, starts, total;
};
constexpr int64_t kLabelFlagsPerScanBlock = 1024 * 128;  // 1024 threads of 128 bits
inline LabelScratchLayout label_scratch_layout(const int64_t shape[3]) {
  auto up4 = [](int64_t x) { return (x + 3) / 4 * 4; };
  const int64_t n = shape[0] * shape[1] * shape[2];
  const int64_t blocks = ((shape[0] + 1) / 2) * ((shape[1] + 1) / 2) * ((shape[2] + 1) / 2);
  const int64_t flag_blocks = (n + kLabelFlagsPerScanBlock - 1) / kLabelFlagsPerScanBlock;
  LabelScratchLayout l{};
  l.mixed = 0;
  l.not_binary = 1;
  l.counts = 4;
  l.parent = l.counts + up4(flag_blocks + 1);
  l.first = l.parent + up4(blocks);
  l.occupancy = l.first + up4(blocks);
  l.starts = l.occupancy + up4((blocks + 3) / 4);
  l.total = l.starts + flag_blocks * kLabelFlagsPerScanBlock / 32;
  return l;
}

#ifdef PETFAST_WITH_CUDA
void gather_tiles_cuda(const NdView& src, const NdView& dst, const TileOrigins& origins, double pad, uintptr_t stream);
void accumulate_tiles_cuda(const NdView& tiles, const NdView& weight_map, const TileOrigins& origins, const NdView& acc,
                           const NdView& weight, uintptr_t stream);
void finalize_tiles_cuda(const NdView& acc, const NdView& labels, uintptr_t stream);
void component_stats_cuda(const Volume& labels, const Volume* image, int64_t count, double* acc, int32_t* box,
                          uintptr_t stream);
// Labels C-contiguous; scratch: int32 of at least label_scratch_layout(shape).total entries.
int64_t label_cuda(const Volume& src, const Volume& dst, int connectivity, const Volume& scratch, const LabelStats* stats,
                   uintptr_t stream);
void resample_cuda(const Volume& src, const Volume& dst, const ResampleArgs& args, uintptr_t stream);
void bspline_prefilter_cuda(const Volume& src, const Volume& coef, uintptr_t stream);
void convolve_axis_cuda(const Volume& src, const Volume& dst, int axis, const std::vector<float>& taps,
                        uintptr_t stream);
// stats: float64 scratch of 4 x N x C entries.
void instance_norm_act_cuda(const NdView& x, const NdView* residual, const NdView& gamma, const NdView& beta,
                            const NdView& out, double eps, double slope, const NdView& stats, uintptr_t stream);
int cuda_device_count();
#endif

}  // namespace petfast
