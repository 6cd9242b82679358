// CPU twin of cuda/resample_cuda.cu: one output row per task, the row along the output's
// smallest-stride axis so that writes stream through memory (separable maps: along the axis that
// reads the source in memory order; see resample_separable).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
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
  int ax[3];
  axes_by_stride(dst.strides, ax);
  const int64_t n_mid = dst.shape[ax[1]], n_inner = dst.shape[ax[2]];
  const Tout fill = static_cast<Tout>(a.fill);
  const IndexMap map = map_in_loop_order(a.map, ax);  // the CUDA twin's summation order
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
        const int64_t p = idx[ax[0]], q = idx[ax[1]];
        double x = map_coord(map, 0, p, q, t), y = map_coord(map, 1, p, q, t), z = map_coord(map, 2, p, q, t);
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
  int ax[3];
  axes_by_stride(dst.strides, ax);
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

// Cubic, axis-aligned, when the destination axis fed by source axis 2 is the output's fastest: the
// tensor-product sum of sample_cubic as three 1-D passes in its nesting and order (source axis 2
// innermost, then 1, then 0, in double), so the results are bit for bit the same, with 4 + 4 + 4
// multiply-adds per output instead of 64 + 16 + 4. Per source slice i (axis 0): its rows along axis
// 2 are sampled (T1, rows x m2), then those rows combined along axis 1 (T2, m1 x m2); each output
// slice combines the T2 of its 4 source slices, kept in a small per-task cache because neighbouring
// output slices share them.
struct CubicAxis {
  int d = 0;                  // destination axis
  int64_t m = 0;              // its length
  std::vector<int64_t> idx;   // 4 source indices per destination index (mirrored at the edges)
  std::vector<double> w;      // and their weights
  std::vector<uint8_t> inside;
};

CubicAxis cubic_axis(const IndexMap& map, int s, int d, const Volume& src, const Volume& dst) {
  CubicAxis ax;
  ax.d = d;
  ax.m = dst.shape[d];
  ax.idx.assign(4 * ax.m, 0);
  ax.w.assign(4 * ax.m, 0.0);
  ax.inside.assign(ax.m, 0);
  for (int64_t q = 0; q < ax.m; ++q) {
    int64_t at[3] = {0, 0, 0};
    at[d] = q;
    double c = map_coord(map, s, at[0], at[1], at[2]);
    ax.inside[q] = inside(c, src.shape[s]);
    if (ax.inside[q]) cubic_support(c, src.shape[s], 1, &ax.idx[4 * q], &ax.w[4 * q]);
  }
  return ax;
}

bool cubic_passes_apply(const Volume& dst, const int* dst_axis_of) {
  const int fast = dst_axis_of[2];
  for (int d = 0; d < 3; ++d)
    if (d != fast && dst.shape[d] > 1 && std::llabs(dst.strides[d]) < std::llabs(dst.strides[fast])) return false;
  return true;
}

void resample_cubic_passes(const Volume& src, const Volume& dst, const ResampleArgs& a, const int* dst_axis_of) {
  const float* in = static_cast<const float*>(src.data);
  float* out = static_cast<float*>(dst.data);
  CubicAxis ax[3];
  for (int s = 0; s < 3; ++s) ax[s] = cubic_axis(a.map, s, dst_axis_of[s], src, dst);
  const int64_t n1 = src.shape[1], m1 = ax[1].m, m2 = ax[2].m;
  const int64_t s0 = src.strides[0], s1 = src.strides[1], s2 = src.strides[2];
  const int64_t o0 = dst.strides[ax[0].d], o1 = dst.strides[ax[1].d], o2 = dst.strides[ax[2].d];
  const float fill = float(a.fill);
  parallel_for(ax[0].m, 4, [&](int64_t v_begin, int64_t v_end) {
    struct Slice {
      int64_t i = -1, used = 0;
      std::vector<double> t2;
    };
    std::vector<Slice> cache(8);
    std::vector<double> t1(n1 * m2);
    int64_t clock = 0;
    auto t2_of = [&](int64_t i) -> const double* {
      Slice* slot = &cache[0];
      for (Slice& c : cache) {
        if (c.i == i) {
          c.used = ++clock;
          return c.t2.data();
        }
        if (c.used < slot->used) slot = &c;
      }
      // Pass 1, along source axis 2: sample_cubic's acc_z.
      const float* plane = in + i * s0;
      for (int64_t j = 0; j < n1; ++j) {
        const float* row = plane + j * s1;
        double* t = &t1[j * m2];
        for (int64_t q = 0; q < m2; ++q) {
          const int64_t* k = &ax[2].idx[4 * q];
          const double* w = &ax[2].w[4 * q];
          t[q] = w[0] * row[k[0] * s2] + w[1] * row[k[1] * s2] + w[2] * row[k[2] * s2] + w[3] * row[k[3] * s2];
        }
      }
      // Pass 2, along source axis 1: acc_y, summed from 0 in the same order.
      slot->i = i;
      slot->used = ++clock;
      slot->t2.assign(m1 * m2, 0.0);
      for (int64_t u = 0; u < m1; ++u) {
        double* t = &slot->t2[u * m2];
        for (int b = 0; b < 4; ++b) {
          const double wb = ax[1].w[4 * u + b];
          const double* r = &t1[ax[1].idx[4 * u + b] * m2];
          for (int64_t q = 0; q < m2; ++q) t[q] += wb * r[q];
        }
      }
      return slot->t2.data();
    };
    std::vector<double> acc(m2);
    for (int64_t v = v_begin; v < v_end; ++v) {
      float* ov = out + v * o0;
      if (!ax[0].inside[v]) {
        for (int64_t u = 0; u < m1; ++u)
          for (int64_t q = 0; q < m2; ++q) ov[u * o1 + q * o2] = fill;
        continue;
      }
      const double* t2[4];
      for (int p = 0; p < 4; ++p) t2[p] = t2_of(ax[0].idx[4 * v + p]);
      const double* w = &ax[0].w[4 * v];
      // Pass 3, along source axis 0: acc, summed from 0 in the same order.
      for (int64_t u = 0; u < m1; ++u) {
        float* o = ov + u * o1;
        if (!ax[1].inside[u]) {
          for (int64_t q = 0; q < m2; ++q) o[q * o2] = fill;
          continue;
        }
        for (int64_t q = 0; q < m2; ++q) acc[q] = 0.0;
        for (int p = 0; p < 4; ++p) {
          const double* r = t2[p] + u * m2;
          for (int64_t q = 0; q < m2; ++q) acc[q] += w[p] * r[q];
        }
        for (int64_t q = 0; q < m2; ++q) o[q * o2] = ax[2].inside[q] ? float(acc[q]) : fill;
      }
    }
  });
}

// dst = src element by element between two layouts of one shape, in 32 x 32 tiles over the two
// axes that are fastest in each (a transpose for C <-> Fortran), so that both sides stream.
void copy_between_layouts(const Volume& src, const Volume& dst) {
  auto fastest = [](const Volume& v) {
    int f = 2;
    for (int d = 0; d < 3; ++d)
      if (v.shape[d] > 1 && std::llabs(v.strides[d]) < std::llabs(v.strides[f])) f = d;
    return f;
  };
  const int fs = fastest(src), fd = fastest(dst) == fs ? (fs + 1) % 3 : fastest(dst);
  const int outer = 3 - fs - fd;
  const float* in = static_cast<const float*>(src.data);
  float* out = static_cast<float*>(dst.data);
  constexpr int64_t kTile = 32;
  parallel_for(src.shape[outer], 1, [&](int64_t begin, int64_t end) {
    for (int64_t x = begin; x < end; ++x)
      for (int64_t a0 = 0; a0 < src.shape[fd]; a0 += kTile)
        for (int64_t b0 = 0; b0 < src.shape[fs]; b0 += kTile) {
          const int64_t a1 = std::min(a0 + kTile, src.shape[fd]), b1 = std::min(b0 + kTile, src.shape[fs]);
          for (int64_t a = a0; a < a1; ++a)
            for (int64_t b = b0; b < b1; ++b)
              out[x * dst.strides[outer] + a * dst.strides[fd] + b * dst.strides[fs]] =
                  in[x * src.strides[outer] + a * src.strides[fd] + b * src.strides[fs]];
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
      if (sep && cubic_passes_apply(dst, dst_axis_of)) {
        resample_cubic_passes(src, dst, a, dst_axis_of);
      } else if (sep) {
        // Another output layout (Fortran order, as a NIfTI input gives): the passes into scratch laid
        // out for them, then a tiled transpose. 2x faster than sampling into the output directly.
        std::unique_ptr<float[]> scratch(new float[size_t(dst.size())]);
        Volume tmp = dst;
        tmp.data = scratch.get();
        const int d0 = dst_axis_of[0], d1 = dst_axis_of[1], d2 = dst_axis_of[2];
        tmp.strides[d2] = 1;
        tmp.strides[d1] = dst.shape[d2];
        tmp.strides[d0] = dst.shape[d2] * dst.shape[d1];
        resample_cubic_passes(src, tmp, a, dst_axis_of);
        copy_between_layouts(tmp, dst);
      } else {
        resample_rows<float, float, 3>(src, dst, a);
      }
    } else {
      throw std::invalid_argument("order 3 samples float32 B-spline coefficients");
    }
  });
}

}  // namespace petfast
