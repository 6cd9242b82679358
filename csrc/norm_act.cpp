// Argument checks and CPU/CUDA dispatch for the fused instance norm + residual + activation.
#include <string>

#include "petfast/half.h"
#include "petfast/ops.h"

namespace petfast {

void instance_norm_act(const NdView& x, const NdView* residual, const NdView& gamma, const NdView& beta,
                       const NdView& out, double eps, double slope, const NdView* stats, uintptr_t stream) {
  const char* what = "instance_norm_act";
  require(x.ndim == 3 && out.ndim == 3, std::string(what) + ": activations are (N, C, spatial) views");
  const int64_t N = x.shape[0], C = x.shape[1], S = x.shape[2];
  require(N > 0 && C > 0 && S > 0, std::string(what) + ": empty activations");
  require(x.strides[2] == 1 || (x.strides[1] == 1 && x.strides[2] == C),
          std::string(what) + ": activations must be planar (N, C, D, H, W) or channels-last contiguous");
  for (const NdView* v : {&out, residual}) {
    if (!v) continue;
    require(v->dtype == x.dtype && v->device == x.device, std::string(what) + ": dtype or device differs");
    for (int a = 0; a < 3; ++a)
      require(v->shape[a] == x.shape[a] && v->strides[a] == x.strides[a],
              std::string(what) + ": output and residual must have the activations' shape and layout");
  }
  for (const NdView* v : {&gamma, &beta})
    require(v->ndim == 1 && v->shape[0] == C && v->strides[0] == 1 && v->dtype == DType::Float32 && v->device == x.device,
            std::string(what) + ": weight and bias are contiguous float32 (C) on the activations' device");
  require(eps > 0, std::string(what) + ": eps must be positive");
  if (x.on_cuda()) {
#ifdef PETFAST_WITH_CUDA
    require(stats && stats->dtype == DType::Float64 && stats->ndim == 1 && stats->shape[0] >= 4 * N * C &&
                stats->strides[0] == 1 && stats->device == x.device,
            "internal: instance_norm_act needs 4 x N x C float64 of scratch on the device");
    return instance_norm_act_cuda(x, residual, gamma, beta, out, eps, slope, *stats, stream);
#else
    no_cuda();
#endif
  }
  instance_norm_act_cpu(x, residual, gamma, beta, out, eps, slope);
}

}  // namespace petfast
