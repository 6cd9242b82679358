// Argument checks and CPU/CUDA dispatch for resample, bspline_prefilter and convolve_axis.
// The Python wrapper validates user input first; these checks guard the kernels' own contract.
#include <string>

#include "petfast/ops.h"

namespace petfast {
namespace {

void check_volume(const Volume& v, const char* name) {
  require(v.data != nullptr || v.size() == 0, std::string(name) + ": null data pointer");
  for (int a = 0; a < 3; ++a) require(v.shape[a] > 0, std::string(name) + ": every axis must have at least one voxel");
}

void check_same_device(const Volume& a, const Volume& b) {
  require(a.device == b.device, "source and destination live on different devices");
}

void check_scratch(const Volume& v, const Volume& like, const char* name) {
  require(v.dtype == DType::Float32 && v.c_contiguous(), std::string(name) + " must be a C-contiguous float32 buffer");
  for (int a = 0; a < 3; ++a) require(v.shape[a] == like.shape[a], std::string(name) + " must have the source's shape");
}

}  // namespace

void resample(const Volume& src, const Volume& dst, const ResampleArgs& a, uintptr_t stream) {
  check_volume(src, "source");
  check_volume(dst, "destination");
  check_same_device(src, dst);
  require(a.order == 0 || a.order == 1 || a.order == 3, "order must be 0 (nearest), 1 (linear) or 3 (cubic B-spline)");
  if (a.order == 0) require(dst.dtype == src.dtype, "order 0 writes the source dtype");
  else require(dst.dtype == DType::Float32, "orders 1 and 3 write float32");
  if (a.order == 3) require(src.dtype == DType::Float32, "order 3 reads float32 B-spline coefficients");
  if (src.on_cuda()) {
#ifdef PETFAST_WITH_CUDA
    resample_cuda(src, dst, a, stream);
#else
    no_cuda();
#endif
  } else {
    resample_cpu(src, dst, a);
  }
}

void bspline_prefilter(const Volume& src, const Volume& coef, uintptr_t stream) {
  check_volume(src, "source");
  check_same_device(src, coef);
  require(coef.dtype == DType::Float32 && coef.c_contiguous(), "coefficients must be a C-contiguous float32 buffer");
  for (int a = 0; a < 3; ++a) {
    const int64_t extra = coef.shape[a] - src.shape[a];
    require(extra >= 0 && extra % 2 == 0, "coefficients must have the source's shape plus an even padding per axis");
  }
  if (src.data == coef.data) {
    for (int a = 0; a < 3; ++a)
      require(coef.shape[a] == src.shape[a] && coef.strides[a] == src.strides[a],
              "in place, the coefficients must be the source itself (no padding)");
  }
  if (src.on_cuda()) {
#ifdef PETFAST_WITH_CUDA
    bspline_prefilter_cuda(src, coef, stream);
#else
    no_cuda();
#endif
  } else {
    bspline_prefilter_cpu(src, coef);
  }
}

void convolve_axis(const Volume& src, const Volume& dst, int axis, const std::vector<float>& taps, uintptr_t stream) {
  check_volume(src, "source");
  check_same_device(src, dst);
  check_scratch(dst, src, "destination");
  require(axis >= 0 && axis < 3, "axis must be 0, 1 or 2");
  require(taps.size() % 2 == 1 && taps.size() <= 257, "taps must have an odd length of at most 257");
  if (src.on_cuda()) {
#ifdef PETFAST_WITH_CUDA
    convolve_axis_cuda(src, dst, axis, taps, stream);
#else
    no_cuda();
#endif
  } else {
    convolve_axis_cpu(src, dst, axis, taps);
  }
}

}  // namespace petfast
