// CPU twins of cuda/filters_cuda.cu: the cubic B-spline prefilter and 1-D convolution along an axis.
#include <algorithm>
#include <vector>

#include "petfast/interp.h"
#include "petfast/ops.h"
#include "petfast/parallel.h"

namespace petfast {
namespace {

constexpr int64_t kBlock = 16;  // lines filtered together across the contiguous axis, for cache reuse

// Filters coef (float32, C-contiguous) in place along axis 0 or 1, kBlock neighbouring lines at a
// time through a double buffer, so that scipy's double-precision recursion is reproduced.
void bspline_strided_axis(const Volume& coef, int axis) {
  float* c = static_cast<float*>(coef.data);
  const int64_t n = coef.shape[axis], n2 = coef.shape[2];
  const int64_t other = axis == 0 ? coef.shape[1] : coef.shape[0];
  const int64_t blocks = (n2 + kBlock - 1) / kBlock;
  parallel_for(other * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> buf(n * kBlock);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t o = t / blocks, k0 = (t % blocks) * kBlock, nb = std::min(kBlock, n2 - k0);
      float* base = c + (axis == 0 ? o * coef.strides[1] : o * coef.strides[0]) + k0;
      const int64_t step = coef.strides[axis];
      for (int64_t i = 0; i < n; ++i)
        for (int64_t q = 0; q < nb; ++q) buf[i * kBlock + q] = base[i * step + q];
      for (int64_t q = 0; q < nb; ++q) bspline_filter_line(buf.data() + q, n, kBlock);
      for (int64_t i = 0; i < n; ++i)
        for (int64_t q = 0; q < nb; ++q) base[i * step + q] = float(buf[i * kBlock + q]);
    }
  });
}

}  // namespace

void bspline_prefilter_cpu(const Volume& src, const Volume& coef) {
  float* c = static_cast<float*>(coef.data);
  const int64_t n0 = src.shape[0], n1 = src.shape[1], n2 = src.shape[2];
  // Axis 2 first, reading the source in whatever dtype and strides it has.
  dispatch_dtype(src.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* s = static_cast<const T*>(src.data);
    parallel_for(n0 * n1, 64, [&](int64_t begin, int64_t end) {
      std::vector<double> line(n2);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t i = r / n1, j = r % n1;
        const T* in = s + i * src.strides[0] + j * src.strides[1];
        for (int64_t k = 0; k < n2; ++k) line[k] = double(in[k * src.strides[2]]);
        bspline_filter_line(line.data(), n2, 1);
        float* out = c + i * coef.strides[0] + j * coef.strides[1];
        for (int64_t k = 0; k < n2; ++k) out[k] = float(line[k]);
      }
    });
  });
  bspline_strided_axis(coef, 1);
  bspline_strided_axis(coef, 0);
}

void convolve_axis_cpu(const Volume& src, const Volume& dst, int axis, const std::vector<float>& taps) {
  const int64_t radius = int64_t(taps.size() / 2);
  const int64_t n0 = dst.shape[0], n1 = dst.shape[1], n2 = dst.shape[2], n = dst.shape[axis];
  float* d = static_cast<float*>(dst.data);
  dispatch_dtype(src.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* s = static_cast<const T*>(src.data);
    parallel_for(n0 * n1, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t i = r / n1, j = r % n1;
        float* out = d + i * dst.strides[0] + j * dst.strides[1];
        if (axis == 2) {
          const T* in = s + i * src.strides[0] + j * src.strides[1];
          for (int64_t k = 0; k < n2; ++k) {
            float acc = 0.f;
            for (int64_t t = -radius; t <= radius; ++t) {
              const int64_t q = std::min(std::max<int64_t>(k + t, 0), n - 1);
              acc += taps[t + radius] * float(in[q * src.strides[2]]);
            }
            out[k] = acc;
          }
        } else {
          // Accumulate whole neighbouring rows: the inner loop runs along the contiguous axis.
          for (int64_t k = 0; k < n2; ++k) out[k] = 0.f;
          const int64_t pos = axis == 0 ? i : j;
          for (int64_t t = -radius; t <= radius; ++t) {
            const int64_t q = std::min(std::max<int64_t>(pos + t, 0), n - 1);
            const T* in = s + (axis == 0 ? q : i) * src.strides[0] + (axis == 1 ? q : j) * src.strides[1];
            const float w = taps[t + radius];
            for (int64_t k = 0; k < n2; ++k) out[k] += w * float(in[k * src.strides[2]]);
          }
        }
      }
    });
  });
}

}  // namespace petfast
