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

constexpr int64_t kBlock = 16;     // rows (axis 2) filtered together, interleaved in a buffer
constexpr int64_t kColumns = 128;  // neighbouring lines filtered together along axes 1 and 0

// bspline_filter_line (interp.h) on q lines of n values at once, interleaved as b[i * q + line], with
// the same operations per line: the loops over lines vectorise, so the recursion's latency is spread
// over many lines instead of stalling each. c0 is scratch for q values.
PF_VECTOR_CLONES void filter_lines(double* __restrict b, int64_t n, int64_t q, double* __restrict c0) {
  if (n < 2) return;
  const double z = kCubicPole, g = kCubicGain, zn1 = std::pow(z, double(n - 1));
  for (int64_t l = 0; l < q; ++l) c0[l] = b[l] * g + zn1 * b[(n - 1) * q + l] * g;
  double zi = z;
  for (int64_t i = 1; i < n - 1 && std::fabs(zi) > 1e-30; ++i) {
    for (int64_t l = 0; l < q; ++l) c0[l] += zi * (b[i * q + l] + zn1 * b[(n - 1 - i) * q + l]) * g;
    zi *= z;
  }
  for (int64_t l = 0; l < q; ++l) b[l] = c0[l] / (1.0 - zn1 * zn1);
  for (int64_t i = 1; i < n; ++i)
    for (int64_t l = 0; l < q; ++l) b[i * q + l] = b[i * q + l] * g + z * b[(i - 1) * q + l];
  for (int64_t l = 0; l < q; ++l)
    b[(n - 1) * q + l] = (z * b[(n - 2) * q + l] + b[(n - 1) * q + l]) * z / (z * z - 1.0);
  for (int64_t i = n - 2; i >= 0; --i)
    for (int64_t l = 0; l < q; ++l) b[i * q + l] = z * (b[(i + 1) * q + l] - b[i * q + l]);
}

// Filters, in place, the lines c[i * step + l] (i < n) for every l < width: whole runs of
// neighbouring lines at once, so that each step of the recursion reads contiguous memory.
// buf holds (n + 1) * width doubles.
PF_VECTOR_CLONES void filter_strided(float* __restrict c, int64_t n, int64_t step, int64_t width, double* __restrict buf) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t l = 0; l < width; ++l) buf[i * width + l] = c[i * step + l];
  filter_lines(buf, n, width, buf + n * width);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t l = 0; l < width; ++l) c[i * step + l] = float(buf[i * width + l]);
}

// Axis 1 of coefficient plane p (C-contiguous, n1 x n2), in column runs of kColumns.
void filter_plane_axis1(float* p, int64_t n1, int64_t n2, std::vector<double>& buf) {
  buf.resize(size_t((n1 + 1) * std::min(kColumns, n2)));
  for (int64_t k0 = 0; k0 < n2; k0 += kColumns) filter_strided(p + k0, n1, n2, std::min(kColumns, n2 - k0), buf.data());
}

// The coefficients' rows (axis 2) for kBlock lines of the source, padded by edge replication: line
// l reads the source row at rows[l] (already clamped on axes 0 and 1) and writes coef row out[l].
// `across` says the lines are neighbours in the source's memory (a transposed source): then each
// step reads a run of them instead of each line's row.
template <typename T>
void filter_rows(const T* const* rows, float* const* out, int64_t nb, bool across, int64_t len, int64_t stride,
                 int64_t pad, int64_t n2, double* buf) {
  constexpr int64_t Q = kBlock;
  const int64_t k1 = pad + len;
  if (across) {
    for (int64_t k = pad; k < k1; ++k)
      for (int64_t l = 0; l < Q; ++l) buf[k * Q + l] = double(rows[l][(k - pad) * stride]);
  } else {
    for (int64_t c = pad; c < k1; c += 32)  // in chunks, so that the block's part of buf stays in L1
      for (int64_t l = 0; l < Q; ++l)
        for (int64_t k = c; k < std::min(c + 32, k1); ++k) buf[k * Q + l] = double(rows[l][(k - pad) * stride]);
  }
  for (int64_t k = 0; k < pad; ++k)
    for (int64_t l = 0; l < Q; ++l) buf[k * Q + l] = buf[pad * Q + l];
  for (int64_t k = k1; k < n2; ++k)
    for (int64_t l = 0; l < Q; ++l) buf[k * Q + l] = buf[(k1 - 1) * Q + l];
  filter_lines(buf, n2, Q, buf + n2 * Q);
  for (int64_t c = 0; c < n2; c += 32)
    for (int64_t l = 0; l < nb; ++l)
      for (int64_t k = c; k < std::min(c + 32, n2); ++k) out[l][k] = float(buf[k * Q + l]);
}

}  // namespace

// Axis 2, then 1, then 0, rounding to float32 in between (the CUDA twin's order), with the same
// operations whatever the source's layout, so layouts agree bit for bit. A source whose rows are its fast axis (C order, or axes 1
// and 2 swapped) is filtered one coefficient plane at a time, axes 2 and 1 while the plane is in
// cache; otherwise (Fortran order) axis 2 takes blocks of lines neighbouring along axis 0 and axis 1
// gets its own pass. Axis 0 last, in runs of whole columns.
void bspline_prefilter_cpu(const Volume& src, const Volume& coef) {
  float* c = static_cast<float*>(coef.data);
  const int64_t n0 = coef.shape[0], n1 = coef.shape[1], n2 = coef.shape[2];
  int64_t pad[3];
  for (int a = 0; a < 3; ++a) pad[a] = (coef.shape[a] - src.shape[a]) / 2;
  const int64_t s0 = std::llabs(src.strides[0]), s1 = std::llabs(src.strides[1]), s2 = std::llabs(src.strides[2]);
  const bool by_plane = s0 >= s1;
  dispatch_dtype(src.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* s = static_cast<const T*>(src.data);
    // Rows (i, j0 .. j0 + 15) by plane, else (i0 .. i0 + 15, j); the last line repeats past the end.
    const bool across = (by_plane ? s1 : s0) < s2;
    auto rows_block = [&](int64_t i, int64_t j, std::vector<double>& buf) {
      const T* rows[kBlock];
      float* out[kBlock];
      const int64_t nb = std::min(kBlock, by_plane ? n1 - j : n0 - i);
      for (int64_t l = 0; l < kBlock; ++l) {
        const int64_t il = by_plane ? i : i + std::min(l, nb - 1), jl = by_plane ? j + std::min(l, nb - 1) : j;
        rows[l] = s + std::clamp<int64_t>(il - pad[0], 0, src.shape[0] - 1) * src.strides[0] +
                  std::clamp<int64_t>(jl - pad[1], 0, src.shape[1] - 1) * src.strides[1];
        out[l] = c + il * coef.strides[0] + jl * coef.strides[1];
      }
      filter_rows(rows, out, nb, across, src.shape[2], src.strides[2], pad[2], n2, buf.data());
    };
    if (by_plane) {
      parallel_for(n0, 1, [&](int64_t begin, int64_t end) {
        std::vector<double> buf((n2 + 1) * kBlock), plane;
        for (int64_t i = begin; i < end; ++i) {
          for (int64_t j = 0; j < n1; j += kBlock) rows_block(i, j, buf);
          filter_plane_axis1(c + i * coef.strides[0], n1, n2, plane);
        }
      });
    } else {
      const int64_t blocks = (n0 + kBlock - 1) / kBlock;
      parallel_for(n1 * blocks, 1, [&](int64_t begin, int64_t end) {
        std::vector<double> buf((n2 + 1) * kBlock);
        for (int64_t t = begin; t < end; ++t) rows_block((t % blocks) * kBlock, t / blocks, buf);
      });
      parallel_for(n0, 1, [&](int64_t begin, int64_t end) {
        std::vector<double> plane;
        for (int64_t i = begin; i < end; ++i) filter_plane_axis1(c + i * coef.strides[0], n1, n2, plane);
      });
    }
  });
  const int64_t runs = (n2 + kColumns - 1) / kColumns;
  parallel_for(n1 * runs, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> buf((n0 + 1) * std::min(kColumns, n2));
    for (int64_t t = begin; t < end; ++t) {
      const int64_t j = t / runs, k0 = (t % runs) * kColumns;
      filter_strided(c + j * coef.strides[1] + k0, n0, coef.strides[0], std::min(kColumns, n2 - k0), buf.data());
    }
  });
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
