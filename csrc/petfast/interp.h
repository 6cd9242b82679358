// Interpolation shared verbatim by the CPU twin and the CUDA kernels, so both give the same numbers.
//
// Conventions (scipy.ndimage mode='constant', as nibabel and nilearn use, and so autoPET's CTres):
// a sample at continuous source index c (per axis) is interpolated when 0 <= c <= n-1 on every axis,
// with a tolerance of kEdgeTol voxel so that grids sharing a border never lose it to rounding; any
// other sample gets the fill value. Spline support that reaches past the array mirrors about the
// edge voxel centre (scipy's whole-sample mirror), which is what scipy does for mode='constant'.
#pragma once
#include <cmath>
#include <cstdint>

#include "petfast/array.h"

#ifdef __CUDACC__
#define PF_HD __host__ __device__ __forceinline__
#else
#define PF_HD inline
#endif

namespace petfast {

constexpr double kEdgeTol = 1e-6;

// The source coordinate of destination voxel (i, j, k) along source axis a, summed left to right
// without fused multiply-adds (nvcc fuses by default), so that the CPU and the GPU round alike and
// pick the same nearest voxel at exact half-voxel ties.
PF_HD double map_coord(const IndexMap& m, int a, int64_t i, int64_t j, int64_t k) {
#ifdef __CUDA_ARCH__
  return __dadd_rn(__dadd_rn(__dadd_rn(__dmul_rn(m.m[a][0], double(i)), __dmul_rn(m.m[a][1], double(j))),
                             __dmul_rn(m.m[a][2], double(k))),
                   m.m[a][3]);
#else
  return m.m[a][0] * double(i) + m.m[a][1] * double(j) + m.m[a][2] * double(k) + m.m[a][3];
#endif
}

// The map with its columns in the order of the loops that walk the destination (ax: destination
// axes from outer to inner), for map_coord(m, a, outer, mid, inner). Both twins sum in that order.
inline IndexMap map_in_loop_order(const IndexMap& m, const int ax[3]) {
  IndexMap r = m;
  for (int a = 0; a < 3; ++a)
    for (int l = 0; l < 3; ++l) r.m[a][l] = m.m[a][ax[l]];
  return r;
}

// True when c lies within the sampled extent [0, n-1]; c is then clamped into it.
PF_HD bool inside(double& c, int64_t n) {
  if (!(c >= -kEdgeTol && c <= double(n - 1) + kEdgeTol)) return false;  // also rejects NaN
  c = c < 0.0 ? 0.0 : (c > double(n - 1) ? double(n - 1) : c);
  return true;
}

// scipy's whole-sample mirror of an index into [0, n-1].
PF_HD int64_t mirror(int64_t idx, int64_t n) {
  if (n <= 1) return 0;
  const int64_t period = 2 * n - 2;
  if (idx < 0) idx = -idx;
  idx %= period;
  return idx >= n ? period - idx : idx;
}

template <typename T>
PF_HD float load(const T* p, int64_t offset) {
  return static_cast<float>(p[offset]);
}

template <typename T>
PF_HD T sample_nearest(const T* src, const int64_t* shape, const int64_t* st, double x, double y, double z) {
  int64_t ix = int64_t(floor(x + 0.5)), iy = int64_t(floor(y + 0.5)), iz = int64_t(floor(z + 0.5));
  ix = ix > shape[0] - 1 ? shape[0] - 1 : ix;
  iy = iy > shape[1] - 1 ? shape[1] - 1 : iy;
  iz = iz > shape[2] - 1 ? shape[2] - 1 : iz;
  return src[ix * st[0] + iy * st[1] + iz * st[2]];
}

// Lower index, upper index (clamped for a 1-voxel axis or the last voxel) and fraction.
PF_HD void linear_support(double c, int64_t n, int64_t& i0, int64_t& i1, float& f) {
  double fl = floor(c);
  i0 = int64_t(fl);
  if (i0 > n - 1) i0 = n - 1;
  i1 = i0 + 1 > n - 1 ? n - 1 : i0 + 1;
  f = float(c - double(i0));
}

template <typename T>
PF_HD float sample_linear(const T* src, const int64_t* shape, const int64_t* st, double x, double y, double z) {
  int64_t x0, x1, y0, y1, z0, z1;
  float fx, fy, fz;
  linear_support(x, shape[0], x0, x1, fx);
  linear_support(y, shape[1], y0, y1, fy);
  linear_support(z, shape[2], z0, z1, fz);
  x0 *= st[0]; x1 *= st[0];
  y0 *= st[1]; y1 *= st[1];
  z0 *= st[2]; z1 *= st[2];
  const float c00 = load(src, x0 + y0 + z0) + fz * (load(src, x0 + y0 + z1) - load(src, x0 + y0 + z0));
  const float c01 = load(src, x0 + y1 + z0) + fz * (load(src, x0 + y1 + z1) - load(src, x0 + y1 + z0));
  const float c10 = load(src, x1 + y0 + z0) + fz * (load(src, x1 + y0 + z1) - load(src, x1 + y0 + z0));
  const float c11 = load(src, x1 + y1 + z0) + fz * (load(src, x1 + y1 + z1) - load(src, x1 + y1 + z0));
  const float c0 = c00 + fy * (c01 - c00);
  const float c1 = c10 + fy * (c11 - c10);
  return c0 + fx * (c1 - c0);
}

// Cubic B-spline weights for the 4 coefficients starting at floor(c) - 1; t = c - floor(c).
PF_HD void cubic_weights(double t, double* w) {
  const double s = 1.0 - t;
  w[0] = s * s * s / 6.0;
  w[1] = (4.0 - 6.0 * t * t + 3.0 * t * t * t) / 6.0;
  w[2] = (1.0 + 3.0 * t + 3.0 * t * t - 3.0 * t * t * t) / 6.0;
  w[3] = t * t * t / 6.0;
}

PF_HD void cubic_support(double c, int64_t n, int64_t stride, int64_t* off, double* w) {
  const double fl = floor(c);
  cubic_weights(c - fl, w);
  const int64_t start = int64_t(fl) - 1;
  for (int q = 0; q < 4; ++q) off[q] = mirror(start + q, n) * stride;
}

// Interpolates prefiltered B-spline coefficients (float32), accumulating in double as scipy does.
PF_HD float sample_cubic(const float* coef, const int64_t* shape, const int64_t* st, double x, double y, double z) {
  int64_t ox[4], oy[4], oz[4];
  double wx[4], wy[4], wz[4];
  cubic_support(x, shape[0], st[0], ox, wx);
  cubic_support(y, shape[1], st[1], oy, wy);
  cubic_support(z, shape[2], st[2], oz, wz);
  double acc = 0.0;
  for (int a = 0; a < 4; ++a) {
    double acc_y = 0.0;
    for (int b = 0; b < 4; ++b) {
      const float* row = coef + ox[a] + oy[b];
      const double acc_z = wz[0] * row[oz[0]] + wz[1] * row[oz[1]] + wz[2] * row[oz[2]] + wz[3] * row[oz[3]];
      acc_y += wy[b] * acc_z;
    }
    acc += wx[a] * acc_y;
  }
  return float(acc);
}

// Poles and gain of the cubic B-spline prefilter (Unser), and scipy's mirror initialisation.
constexpr double kCubicPole = -0.267949192431122706472553658494127633;  // sqrt(3) - 2
constexpr double kCubicGain = 6.0;                                       // (1 - z)(1 - 1/z)

// In-place cubic B-spline prefilter of one line of n values spaced `stride` apart (mirror boundary).
template <typename V>
PF_HD void bspline_filter_line(V* c, int64_t n, int64_t stride) {
  if (n < 2) return;
  const double z = kCubicPole;
  // Causal initialisation: sum over the mirrored line; terms below 1e-30 cannot change a double.
  double zn1 = pow(z, double(n - 1));
  double c0 = double(c[0]) * kCubicGain + zn1 * double(c[(n - 1) * stride]) * kCubicGain;
  double zi = z;
  for (int64_t i = 1; i < n - 1 && fabs(zi) > 1e-30; ++i) {
    c0 += zi * (double(c[i * stride]) + zn1 * double(c[(n - 1 - i) * stride])) * kCubicGain;
    zi *= z;
  }
  c0 /= 1.0 - zn1 * zn1;
  double prev = c0;
  c[0] = V(prev);
  for (int64_t i = 1; i < n; ++i) {
    prev = double(c[i * stride]) * kCubicGain + z * prev;
    c[i * stride] = V(prev);
  }
  // Anti-causal pass, initialised from the last two causal values.
  const double last_causal = prev;
  const double before_last = n >= 2 ? double(c[(n - 2) * stride]) : 0.0;
  double next = (z * before_last + last_causal) * z / (z * z - 1.0);
  c[(n - 1) * stride] = V(next);
  for (int64_t i = n - 2; i >= 0; --i) {
    next = z * (next - double(c[i * stride]));
    c[i * stride] = V(next);
  }
}

}  // namespace petfast
