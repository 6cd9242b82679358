// CPU twins of cuda/filters_cuda.cu: the cubic B-spline prefilter and 1-D convolution along an axis.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <vector>

#include "petfast/interp.h"
#include "petfast/ops.h"
#include "petfast/parallel.h"

namespace petfast {
namespace {

constexpr int64_t kBlock = 16;  // lines filtered together, interleaved in a buffer as b[i * kBlock + q]

// bspline_filter_line (interp.h) on kBlock interleaved lines of n values at once, with the same
// operations per line: the loops over q vectorise, so the recursion's latency is spread over 16
// lines instead of stalling each. Lines past `lines` hold whatever the buffer held and are unused.
PF_VECTOR_CLONES void filter_lines(double* __restrict b, int64_t n) {
  constexpr int64_t Q = kBlock;
  if (n < 2) return;
  const double z = kCubicPole, g = kCubicGain, zn1 = std::pow(z, double(n - 1));
  double c0[Q];
  for (int64_t q = 0; q < Q; ++q) c0[q] = b[q] * g + zn1 * b[(n - 1) * Q + q] * g;
  double zi = z;
  for (int64_t i = 1; i < n - 1 && std::fabs(zi) > 1e-30; ++i) {
    for (int64_t q = 0; q < Q; ++q) c0[q] += zi * (b[i * Q + q] + zn1 * b[(n - 1 - i) * Q + q]) * g;
    zi *= z;
  }
  for (int64_t q = 0; q < Q; ++q) b[q] = c0[q] / (1.0 - zn1 * zn1);
  for (int64_t i = 1; i < n; ++i)
    for (int64_t q = 0; q < Q; ++q) b[i * Q + q] = b[i * Q + q] * g + z * b[(i - 1) * Q + q];
  for (int64_t q = 0; q < Q; ++q)
    b[(n - 1) * Q + q] = (z * b[(n - 2) * Q + q] + b[(n - 1) * Q + q]) * z / (z * z - 1.0);
  for (int64_t i = n - 2; i >= 0; --i)
    for (int64_t q = 0; q < Q; ++q) b[i * Q + q] = z * (b[(i + 1) * Q + q] - b[i * Q + q]);
}

// Filters coef (float32, C-contiguous) in place along axis 0 or 1, kBlock neighbouring lines at a
// time (neighbours along the contiguous axis), in double as scipy.
void bspline_strided_axis(const Volume& coef, int axis) {
  float* c = static_cast<float*>(coef.data);
  const int64_t n = coef.shape[axis], n2 = coef.shape[2];
  const int64_t other = axis == 0 ? coef.shape[1] : coef.shape[0];
  const int64_t blocks = (n2 + kBlock - 1) / kBlock;
  parallel_for(other * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> buf(n * kBlock, 0.0);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t o = t / blocks, k0 = (t % blocks) * kBlock, nb = std::min(kBlock, n2 - k0);
      float* base = c + (axis == 0 ? o * coef.strides[1] : o * coef.strides[0]) + k0;
      const int64_t step = coef.strides[axis];
      for (int64_t i = 0; i < n; ++i)
        for (int64_t q = 0; q < nb; ++q) buf[i * kBlock + q] = base[i * step + q];
      filter_lines(buf.data(), n);
      for (int64_t i = 0; i < n; ++i)
        for (int64_t q = 0; q < nb; ++q) base[i * step + q] = float(buf[i * kBlock + q]);
    }
  });
}

}  // namespace

void bspline_prefilter_cpu(const Volume& src, const Volume& coef) {
  float* c = static_cast<float*>(coef.data);
  const int64_t n2 = src.shape[2];
  // Axis 2 first, reading the source in whatever dtype and strides it has: kBlock lines at a time,
  // side by side in the buffer. The lines of a block are neighbours along whichever of axes 0 and 1
  // has the smaller stride, so that a transposed source (nnU-Net's (z, y, x) view of an (i, j, k)
  // array) is read a cache line at a time rather than a value at a time.
  const int ax = std::llabs(src.strides[0]) < std::llabs(src.strides[1]) ? 0 : 1;
  const int64_t n_in = src.shape[ax], n_out = src.shape[1 - ax], blocks = (n_in + kBlock - 1) / kBlock;
  const bool rows_contiguous = std::llabs(src.strides[2]) <= std::llabs(src.strides[ax]);
  dispatch_dtype(src.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* s = static_cast<const T*>(src.data);
    parallel_for(n_out * blocks, 4, [&](int64_t begin, int64_t end) {
      std::vector<double> buf(n2 * kBlock, 0.0);
      for (int64_t t = begin; t < end; ++t) {
        const int64_t o = t / blocks, q0 = (t % blocks) * kBlock, nb = std::min(kBlock, n_in - q0);
        auto index = [&](int64_t q, int64_t& i, int64_t& j) {
          i = ax == 0 ? q0 + q : o;
          j = ax == 0 ? o : q0 + q;
        };
        auto line = [&](int64_t q) {
          int64_t i, j;
          index(q, i, j);
          return s + i * src.strides[0] + j * src.strides[1];
        };
        if (rows_contiguous) {
          for (int64_t q = 0; q < nb; ++q) {
            const T* in = line(q);
            for (int64_t k = 0; k < n2; ++k) buf[k * kBlock + q] = double(in[k * src.strides[2]]);
          }
        } else {
          const T* first = line(0);
          const int64_t step = src.strides[ax];
          for (int64_t k = 0; k < n2; ++k)
            for (int64_t q = 0; q < nb; ++q) buf[k * kBlock + q] = double(first[q * step + k * src.strides[2]]);
        }
        filter_lines(buf.data(), n2);
        for (int64_t q = 0; q < nb; ++q) {
          int64_t i, j;
          index(q, i, j);
          float* out = c + i * coef.strides[0] + j * coef.strides[1];
          for (int64_t k = 0; k < n2; ++k) out[k] = float(buf[k * kBlock + q]);
        }
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
