// CPU twin of cuda/resample_cuda.cu: one output row per task, the row along the output's
// smallest-stride axis so that writes stream through memory (separable maps: along the axis that
// reads the source in memory order; see resample_separable).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <vector>

#include "petfast/interp.h"
#include "petfast/ops.h"
#include "petfast/parallel.h"

namespace petfast {
namespace {

template <typename Tin, typename Tout, int Order>
void resample_rows(const Volume& src, const Volume& dst, const ResampleArgs& a) {
  const Tin* in = static_cast<const Tin*>(src.data);
  Tout* out = static_cast<Tout*>(dst.data);
  // Loop axes ordered by decreasing |stride| of the output; the last one is the inner loop.
  int ax[3] = {0, 1, 2};
  std::sort(ax, ax + 3, [&](int p, int q) { return std::llabs(dst.strides[p]) > std::llabs(dst.strides[q]); });
  const int64_t n_mid = dst.shape[ax[1]], n_inner = dst.shape[ax[2]];
  const Tout fill = static_cast<Tout>(a.fill);
  parallel_for(dst.shape[ax[0]] * n_mid, std::max<int64_t>(1, 16384 / std::max<int64_t>(n_inner, 1)),
               [&](int64_t begin, int64_t end) {
    int64_t idx[3];
    for (int64_t r = begin; r < end; ++r) {
      idx[ax[0]] = r / n_mid;
      idx[ax[1]] = r % n_mid;
      for (int64_t t = 0; t < n_inner; ++t) {
        idx[ax[2]] = t;
        const int64_t i = idx[0], j = idx[1], k = idx[2];
        Tout* o = out + i * dst.strides[0] + j * dst.strides[1] + k * dst.strides[2];
        double x = map_coord(a.map, 0, i, j, k), y = map_coord(a.map, 1, i, j, k), z = map_coord(a.map, 2, i, j, k);
        if (!(inside(x, src.shape[0]) && inside(y, src.shape[1]) && inside(z, src.shape[2]))) {
          *o = fill;
          continue;
        }
        if constexpr (Order == 0) {
          *o = sample_nearest(in, src.shape, src.strides, x, y, z);
        } else if constexpr (Order == 1) {
          *o = sample_linear(in, src.shape, src.strides, x, y, z);
        } else {
          *o = sample_cubic(reinterpret_cast<const float*>(in), src.shape, src.strides, x, y, z);
        }
      }
    }
  });
}

// Axis-aligned maps (flips, permutations, zooms, shifts: every CT/PET pair from one scanner) are
// separable: per destination axis, the source offsets and weights depend on one index only, so
// they are tabulated once and the inner loop is loads and lerps. Same arithmetic as interp.h, so
// the results equal the generic path (and the CUDA kernel) bit for bit.
struct AxisTable {
  int dst_axis = 0;
  std::vector<int64_t> lo, hi;  // element offsets of the lower / upper neighbour (or the nearest)
  std::vector<float> frac;
  std::vector<uint8_t> inside;
  std::vector<int64_t> off4;  // cubic: 4 offsets and 4 weights per index
  std::vector<double> w4;
};

// For a signed-permutation map, the destination axis feeding each source axis; else false.
bool separable(const IndexMap& m, int* dst_axis_of) {
  bool used[3] = {false, false, false};
  for (int a = 0; a < 3; ++a) {
    int nonzero = 0;
    for (int b = 0; b < 3; ++b)
      if (m.m[a][b] != 0.0) {
        ++nonzero;
        dst_axis_of[a] = b;
      }
    if (nonzero != 1 || used[dst_axis_of[a]]) return false;
    used[dst_axis_of[a]] = true;
  }
  return true;
}

template <int Order>
AxisTable make_table(const IndexMap& m, int a, int b, const Volume& src, const Volume& dst) {
  AxisTable t;
  t.dst_axis = b;
  const int64_t n = dst.shape[b];
  t.lo.resize(n);
  t.hi.resize(n);
  t.frac.resize(n);
  t.inside.resize(n);
  if (Order == 3) {
    t.off4.resize(4 * n);
    t.w4.resize(4 * n);
  }
  for (int64_t q = 0; q < n; ++q) {
    int64_t idx[3] = {0, 0, 0};
    idx[b] = q;
    double c = map_coord(m, a, idx[0], idx[1], idx[2]);
    t.inside[q] = inside(c, src.shape[a]);
    if (!t.inside[q]) continue;
    if (Order == 0) {
      int64_t i = int64_t(floor(c + 0.5));
      t.lo[q] = (i > src.shape[a] - 1 ? src.shape[a] - 1 : i) * src.strides[a];
    } else if (Order == 3) {
      cubic_support(c, src.shape[a], src.strides[a], &t.off4[4 * q], &t.w4[4 * q]);
    } else {
      int64_t i0, i1;
      linear_support(c, src.shape[a], i0, i1, t.frac[q]);
      t.lo[q] = i0 * src.strides[a];
      t.hi[q] = i1 * src.strides[a];
    }
  }
  return t;
}

template <typename Tin, typename Tout, int Order>
void resample_separable(const Volume& src, const Volume& dst, const ResampleArgs& a, const int* dst_axis_of) {
  const Tin* in = static_cast<const Tin*>(src.data);
  Tout* out = static_cast<Tout*>(dst.data);
  // Inner loop: the destination axis that feeds the source's smallest-stride axis, so that
  // consecutive samples read neighbouring memory. Middle loop: the destination's smaller-stride axis
  // of the other two, so that consecutive rows fill the same output cache lines. When source and
  // destination share a layout this is the destination's memory order; when they differ (C-ordered
  // B-spline coefficients into a Fortran-ordered output, as NIfTI inputs give) it is a blocked
  // transpose: reading the source across memory instead was 5x slower.
  int src_fast = 0;
  for (int s = 1; s < 3; ++s)
    if (std::llabs(src.strides[s]) < std::llabs(src.strides[src_fast])) src_fast = s;
  int ax[3] = {0, 1, 2};
  std::sort(ax, ax + 3, [&](int p, int q) { return std::llabs(dst.strides[p]) > std::llabs(dst.strides[q]); });
  std::stable_partition(ax, ax + 3, [&](int b) { return b != dst_axis_of[src_fast]; });
  AxisTable tab[3];
  int src_of_dst[3];
  for (int s = 0; s < 3; ++s) {
    tab[s] = make_table<Order>(a.map, s, dst_axis_of[s], src, dst);
    src_of_dst[dst_axis_of[s]] = s;
  }
  const int inner = src_of_dst[ax[2]];  // the source axis that varies along a row
  const int64_t n_mid = dst.shape[ax[1]], n_inner = dst.shape[ax[2]], step = dst.strides[ax[2]];
  const Tout fill = static_cast<Tout>(a.fill);
  parallel_for(dst.shape[ax[0]] * n_mid, std::max<int64_t>(1, 16384 / std::max<int64_t>(n_inner, 1)),
               [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      int64_t idx[3] = {0, 0, 0};
      idx[ax[0]] = r / n_mid;
      idx[ax[1]] = r % n_mid;
      Tout* o = out + idx[0] * dst.strides[0] + idx[1] * dst.strides[1] + idx[2] * dst.strides[2];
      int64_t lo[3] = {0, 0, 0}, hi[3] = {0, 0, 0};
      float f[3] = {0.f, 0.f, 0.f};
      const int64_t* off[3] = {nullptr, nullptr, nullptr};
      const double* w[3] = {nullptr, nullptr, nullptr};
      bool row_inside = true;
      for (int s = 0; s < 3; ++s) {
        if (s == inner) continue;
        const int64_t q = idx[tab[s].dst_axis];
        row_inside = row_inside && tab[s].inside[q];
        lo[s] = tab[s].lo[q];
        hi[s] = tab[s].hi[q];
        f[s] = tab[s].frac[q];
        if (Order == 3) {
          off[s] = &tab[s].off4[4 * q];
          w[s] = &tab[s].w4[4 * q];
        }
      }
      const AxisTable& ti = tab[inner];
      for (int64_t t = 0; t < n_inner; ++t, o += step) {
        if (!(row_inside && ti.inside[t])) {
          *o = fill;
          continue;
        }
        lo[inner] = ti.lo[t];
        if constexpr (Order == 0) {
          *o = in[lo[0] + lo[1] + lo[2]];
        } else if constexpr (Order == 3) {
          // The arithmetic of sample_cubic in interp.h, with the supports read from the tables.
          off[inner] = &ti.off4[4 * t];
          w[inner] = &ti.w4[4 * t];
          double acc = 0.0;
          for (int p = 0; p < 4; ++p) {
            double acc_y = 0.0;
            for (int q = 0; q < 4; ++q) {
              const Tin* row = in + off[0][p] + off[1][q];
              const double acc_z = w[2][0] * row[off[2][0]] + w[2][1] * row[off[2][1]] + w[2][2] * row[off[2][2]] +
                                   w[2][3] * row[off[2][3]];
              acc_y += w[1][q] * acc_z;
            }
            acc += w[0][p] * acc_y;
          }
          *o = float(acc);
        } else {
          hi[inner] = ti.hi[t];
          f[inner] = ti.frac[t];
          const int64_t x0 = lo[0], x1 = hi[0], y0 = lo[1], y1 = hi[1], z0 = lo[2], z1 = hi[2];
          const float fx = f[0], fy = f[1], fz = f[2];
          const float c00 = load(in, x0 + y0 + z0) + fz * (load(in, x0 + y0 + z1) - load(in, x0 + y0 + z0));
          const float c01 = load(in, x0 + y1 + z0) + fz * (load(in, x0 + y1 + z1) - load(in, x0 + y1 + z0));
          const float c10 = load(in, x1 + y0 + z0) + fz * (load(in, x1 + y0 + z1) - load(in, x1 + y0 + z0));
          const float c11 = load(in, x1 + y1 + z0) + fz * (load(in, x1 + y1 + z1) - load(in, x1 + y1 + z0));
          const float c0 = c00 + fy * (c01 - c00);
          const float c1 = c10 + fy * (c11 - c10);
          *o = c0 + fx * (c1 - c0);
        }
      }
    }
  });
}

}  // namespace

void resample_cpu(const Volume& src, const Volume& dst, const ResampleArgs& a) {
  dispatch_dtype(src.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    int dst_axis_of[3];
    const bool sep = separable(a.map, dst_axis_of);
    if (a.order == 0) {
      sep ? resample_separable<T, T, 0>(src, dst, a, dst_axis_of) : resample_rows<T, T, 0>(src, dst, a);
    } else if (a.order == 1) {
      sep ? resample_separable<T, float, 1>(src, dst, a, dst_axis_of) : resample_rows<T, float, 1>(src, dst, a);
    } else if constexpr (std::is_same_v<T, float>) {
      sep ? resample_separable<float, float, 3>(src, dst, a, dst_axis_of) : resample_rows<float, float, 3>(src, dst, a);
    } else {
      throw std::invalid_argument("order 3 samples float32 B-spline coefficients");
    }
  });
}

}  // namespace petfast
