// Argument checks for the decoder's upsampling + skip concatenation (CPU only: on CUDA the Python
// layer keeps torch's transposed convolution and cat).
#include <string>

#include "petfast/ops.h"

namespace petfast {
namespace {

bool channels_last_contiguous(const NdView& v) {
  const int64_t C = v.shape[1], D = v.shape[2], H = v.shape[3], W = v.shape[4];
  return v.strides[1] == 1 && v.strides[4] == C && v.strides[3] == W * C && v.strides[2] == H * W * C &&
         v.strides[0] == D * H * W * C;
}

}  // namespace

void upsample_concat(const NdView& rows, const NdView& skip, const NdView& out, const int64_t factor[3]) {
  const std::string what = "upsample_concat: ";
  require(rows.ndim == 2 && skip.ndim == 5 && out.ndim == 5, what + "rows are 2-D, skip and output 5-D");
  require(!rows.on_cuda() && !skip.on_cuda() && !out.on_cuda(), what + "runs on the CPU");
  require(rows.dtype == out.dtype && skip.dtype == out.dtype, what + "rows, skip and output differ in dtype");
  const int64_t Cs = skip.shape[1], Cu = out.shape[1] - Cs;
  require(Cs > 0 && Cu > 0, what + "the output needs more channels than the skip");
  require(skip.shape[0] == out.shape[0], what + "skip and output differ in batch size");
  int64_t voxels = out.shape[0];
  for (int a = 0; a < 3; ++a) {
    require(factor[a] >= 1 && out.shape[2 + a] % factor[a] == 0, what + "output size not a multiple of the factor");
    require(skip.shape[2 + a] == out.shape[2 + a], what + "skip and output differ in spatial shape");
    voxels *= out.shape[2 + a] / factor[a];
  }
  require(rows.shape[0] == voxels && rows.shape[1] == factor[0] * factor[1] * factor[2] * Cu &&
              rows.strides[1] == 1 && rows.strides[0] == rows.shape[1],
          what + "rows must be contiguous (input voxels, factor volume x upsampled channels)");
  require(channels_last_contiguous(skip) && channels_last_contiguous(out), what + "skip and output must be channels-last");
  upsample_concat_cpu(rows, skip, out, factor);
}

}  // namespace petfast
