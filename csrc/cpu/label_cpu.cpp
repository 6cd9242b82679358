// CPU twin of cuda/label_cuda.cu: 3-D connected components with union-find over voxel indices.
//
// The volume is walked in memory order (the view's axes sorted by stride). Each foreground voxel
// takes the provisional label of an already-visited neighbour of equal value (or a new one) and
// unites the labels of the others; unions keep the smaller label as root, so a component's root is
// its first voxel in walk order. Slabs of the outer axis are labelled in parallel and then joined
// across their boundary planes; roots are numbered 1..N in walk order in one final pass,
// and when the walk order is not the logical (i, j, k) raster order (a Fortran-ordered array, say)
// the labels are renumbered so that numbering always follows the first voxel in (i, j, k) raster
// order, as scipy.ndimage.label and cc3d (for C-ordered input) number them.
#include <algorithm>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#include <climits>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <vector>

#include "cpu/stats_rows.h"
#include "petfast/ops.h"
#include "petfast/parallel.h"

namespace petfast {
namespace {

// Union-find over provisional labels; the smaller label stays root.
inline int32_t find_root(std::vector<int32_t>& parent, int32_t x) {
  while (parent[x] != x) {
    parent[x] = parent[parent[x]];  // path halving
    x = parent[x];
  }
  return x;
}

// Joins the trees of the roots `root` and `other`; returns the new root (the smaller).
inline int32_t link_roots(std::vector<int32_t>& parent, int32_t root, int32_t other) {
  if (other < root) {
    parent[root] = other;
    return other;
  }
  if (root < other) parent[other] = root;
  return root;
}

// Joins the trees of a and b while other threads join others in the same table, as the CUDA twin
// does: entries are read and replaced with atomics, only a root is ever re-pointed, and always to a
// smaller root, so a walk always ends; a root that another thread re-pointed meanwhile fails the
// compare-and-swap, and the walk goes on from where it points now. No path compression here.
inline int32_t find_root_shared(const int32_t* parent, int32_t x) {
  for (int32_t p; (p = __atomic_load_n(parent + x, __ATOMIC_RELAXED)) != x;) x = p;
  return x;
}

inline void unite_shared(int32_t* parent, int32_t a, int32_t b) {
  while (true) {
    a = find_root_shared(parent, a);
    b = find_root_shared(parent, b);
    if (a == b) return;
    if (a > b) std::swap(a, b);
    int32_t expected = b;  // b still a root: hang it under a
    if (__atomic_compare_exchange_n(parent + b, &expected, a, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) return;
    b = expected;
  }
}

struct Offset {
  int da, db, dc;
};

// Is `d` a neighbour offset under this connectivity (6: faces, 18: + edges, 26: + corners)?
bool adjacent(Offset d, int connectivity) {
  const int nonzero = (d.da != 0) + (d.db != 0) + (d.dc != 0);
  const bool unit = std::abs(d.da) <= 1 && std::abs(d.db) <= 1 && std::abs(d.dc) <= 1;
  return unit && nonzero >= 1 && nonzero <= (connectivity == 6 ? 1 : (connectivity == 18 ? 2 : 3));
}

// The already-visited neighbours of a voxel in raster order: the one before it on its row first,
// then the one below it, then the rest. Two visited neighbours that touch each other and share the
// voxel's value were joined when the later of them was visited, so once one neighbour has matched,
// every neighbour adjacent to it is skipped (`covers`): this prunes most loads and unions on
// dense masks without changing the result.
struct Neighbourhood {
  std::vector<Offset> offsets;
  std::vector<uint32_t> covers;  // bit q: neighbour q is adjacent to this one
};

Neighbourhood backward_neighbours(int connectivity) {
  Neighbourhood nb;
  auto add = [&](Offset d) {
    for (const Offset& e : nb.offsets)
      if (e.da == d.da && e.db == d.db && e.dc == d.dc) return;
    nb.offsets.push_back(d);
  };
  add({0, 0, -1});
  add({-1, 0, 0});
  add({0, -1, 0});
  for (int da = -1; da <= 0; ++da)
    for (int db = -1; db <= 1; ++db)
      for (int dc = -1; dc <= 1; ++dc) {
        const Offset d{da, db, dc};
        const bool backward = da < 0 || (da == 0 && (db < 0 || (db == 0 && dc < 0)));
        if (backward && adjacent(d, connectivity)) add(d);
      }
  for (const Offset& p : nb.offsets) {
    uint32_t mask = 0;
    for (size_t q = 0; q < nb.offsets.size(); ++q) {
      const Offset& e = nb.offsets[q];
      if (adjacent(Offset{e.da - p.da, e.db - p.db, e.dc - p.dc}, connectivity)) mask |= 1u << q;
    }
    nb.covers.push_back(mask);
  }
  return nb;
}

// Bit k set when row[k] != 0, for the first len (<= 64) values of a contiguous row.
template <typename T>
inline uint64_t nonzero_bits(const T* row, int64_t len) {
  uint64_t bits = 0;
  for (int64_t k = 0; k < len; ++k) bits |= uint64_t(row[k] != T(0)) << k;
  return bits;
}

#if defined(__SSE2__)
// uint8 masks (the common case): 16 voxels per compare, and an all-background block costs 4 loads.
template <>
inline uint64_t nonzero_bits<uint8_t>(const uint8_t* row, int64_t len) {
  if (len < 64) {
    uint64_t bits = 0;
    for (int64_t k = 0; k < len; ++k) bits |= uint64_t(row[k] != 0) << k;
    return bits;
  }
  const __m128i zero = _mm_setzero_si128();
  uint64_t zero_bits = 0;
  for (int q = 0; q < 4; ++q) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 16 * q));
    zero_bits |= uint64_t(uint32_t(_mm_movemask_epi8(_mm_cmpeq_epi8(v, zero)))) << (16 * q);
  }
  return ~zero_bits;
}
#endif

// Binary fast path. While every foreground voxel seen so far in a slab has the same value, the
// visited neighbours of a voxel are described by 13 bits read from per-row foreground bitmasks
// (bits 0-8: the previous plane's rows b-1, b, b+1 at c-1, c, c+1; 9-11: this plane's row b-1;
// 12: this row at c-1). A table maps each pattern to one neighbour per group of mutually connected
// neighbours (those were joined when visited), so a voxel costs a lookup, one label load and a union
// only where separate groups meet: no per-neighbour branch for noise to mispredict.
Offset bit_offset(int j) {
  if (j < 9) return {-1, j / 3 - 1, j % 3 - 1};
  if (j < 12) return {0, -1, j - 10};
  return {0, 0, -1};
}

struct PatternTable {
  uint32_t allowed = 0;     // the bits that are neighbours under this connectivity
  uint32_t entry[1 << 13];  // bits 0-2: group count n; then n 4-bit neighbour bits, one per group
};

PatternTable make_pattern_table(int connectivity) {
  PatternTable t;
  // Preferred representatives: the voxel before on the row, then the one below, then the previous row.
  const int order[13] = {12, 4, 10, 9, 11, 1, 3, 5, 7, 0, 2, 6, 8};
  uint32_t touches[13];
  for (int j = 0; j < 13; ++j) {
    if (adjacent(bit_offset(j), connectivity)) t.allowed |= 1u << j;
    touches[j] = 0;
    for (int k = 0; k < 13; ++k) {
      const Offset a = bit_offset(j), b = bit_offset(k);
      if (adjacent(Offset{b.da - a.da, b.db - a.db, b.dc - a.dc}, connectivity)) touches[j] |= 1u << k;
    }
  }
  for (uint32_t cfg = 0; cfg < (1u << 13); ++cfg) {
    const uint32_t present = cfg & t.allowed;
    uint32_t seen = 0, e = 0, n = 0;
    for (int j : order) {
      if (!(present >> j & 1) || (seen >> j & 1)) continue;
      // Flood j's group within the present neighbours.
      uint32_t group = 1u << j, before = 0;
      while (group != before) {
        before = group;
        for (int k = 0; k < 13; ++k)
          if (before >> k & 1) group |= touches[k] & present;
      }
      seen |= group;
      e |= uint32_t(j) << (3 + 4 * n);
      ++n;
    }
    require(n <= 7, "internal: pattern table");
    t.entry[cfg] = e | n;
  }
  return t;
}

const PatternTable& pattern_table(int connectivity) {
  static const PatternTable tables[3] = {make_pattern_table(6), make_pattern_table(18), make_pattern_table(26)};
  return tables[connectivity == 6 ? 0 : (connectivity == 18 ? 1 : 2)];
}

// Foreground bits of a row of `len` voxels (stride `step`), voxel c at bit c + 8 of `dst` (a zero
// byte first, so that voxel -1 reads as background). Sets `mixed` when a foreground value differs
// from `first` (which the first foreground voxel of the slab sets).
template <typename T>
void row_bits(const T* row, int64_t step, int64_t len, uint8_t* dst, T& first, bool& mixed) {
  for (int64_t c0 = 0; c0 < len; c0 += 64) {
    const int64_t n = std::min<int64_t>(64, len - c0);
    uint64_t bits;
    if (step == 1) {
      bits = nonzero_bits(row + c0, n);
    } else {
      bits = 0;
      for (int64_t k = 0; k < n; ++k) bits |= uint64_t(row[(c0 + k) * step] != T(0)) << k;
    }
    if (bits) {
      if (first == T(0)) first = row[(c0 + __builtin_ctzll(bits)) * step];
      bool differs = false;
      for (int64_t k = 0; k < n; ++k) {
        const T v = row[(c0 + k) * step];
        differs |= (v != T(0)) & (v != first);
      }
      mixed |= differs;
    }
    std::memcpy(dst + 1 + c0 / 8, &bits, 8);
  }
}

// Bits of voxels c-1, c, c+1 of a row stored by row_bits.
inline uint32_t three_bits(const uint8_t* row, int64_t c) {
  uint32_t x;
  std::memcpy(&x, row + ((c + 7) >> 3), 4);
  return (x >> ((c + 7) & 7)) & 7u;
}

// NN (3, 9 or 13 backward neighbours) is a compile-time constant so that the neighbour loop unrolls
// with its offsets in registers.
template <typename T, int NN>
int64_t label_typed(const Volume& src, const Volume& dst, int connectivity, const int* order, const LabelStats* stats) {
  // View both volumes in walk order (a: outer, b: middle, c: inner).
  const int64_t na = src.shape[order[0]], nb = src.shape[order[1]], nc = src.shape[order[2]];
  const int64_t sa = src.strides[order[0]], sb = src.strides[order[1]], sc = src.strides[order[2]];
  const T* in = static_cast<const T*>(src.data);
  int32_t* out = static_cast<int32_t*>(dst.data);  // contiguous in walk order (checked by the caller)
  const Neighbourhood hood = backward_neighbours(connectivity);
  require(int(hood.offsets.size()) == NN, "internal: neighbourhood size");
  int64_t in_step[NN], out_step[NN];
  uint32_t covers[NN];
  Offset offs[NN];
  for (int q = 0; q < NN; ++q) {
    const Offset& d = hood.offsets[q];
    offs[q] = d;
    covers[q] = hood.covers[q];
    in_step[q] = d.da * sa + d.db * sb + d.dc * sc;
    out_step[q] = (d.da * nb + d.db) * nc + d.dc;
  }
  // A slab of at least 4 planes and 32k voxels per thread: below that, starting a thread costs more
  // than it saves (a 16^3 mask took 90 us on one thread, 174 us on two).
  constexpr int64_t kMinVoxelsPerThread = 1 << 15;
  const int threads = int(std::max<int64_t>(
      1, std::min<int64_t>({int64_t(get_num_threads()), na / 4, na * nb * nc / kMinVoxelsPerThread})));
  std::vector<int64_t> slab(threads + 1);
  for (int t = 0; t <= threads; ++t) slab[t] = na * t / threads;
  std::vector<std::vector<int32_t>> parents(threads);
  // When the walk is not the logical (i, j, k) raster order (a Fortran-ordered array, say), step 4
  // numbers the components by their first voxel in raster order. Step 1 finds it on the way: each
  // provisional label keeps the smallest logical index of its voxels, updated only where a row's
  // label changes (the logical index grows along a row, so the rest of a run cannot be smaller).
  const bool raster_walk = order[0] == 0 && order[1] == 1 && order[2] == 2;
  int64_t logical_stride[3];  // logical C-order index step of each walk axis
  const int64_t lstr[3] = {src.shape[1] * src.shape[2], src.shape[2], 1};
  for (int w = 0; w < 3; ++w) logical_stride[w] = lstr[order[w]];
  std::vector<std::vector<int64_t>> firsts(raster_walk ? 0 : threads);  // per slab, by provisional label

  // Provisional label of voxel (a, b, c) of value `val` from its visited neighbours (0: none),
  // uniting the labels of the neighbours that match. `inside` skips the bounds checks.
  auto join = [&](std::vector<int32_t>& parent, int64_t a, int64_t b, int64_t c, const T* p, int32_t* o, T val,
                  int64_t a_min, bool inside) {
    int32_t mine = 0, mine_root = 0;
    uint32_t covered = 0;
#pragma GCC unroll 13
    for (int q = 0; q < NN; ++q) {
      if (covered >> q & 1u) continue;
      if (!inside) {
        const Offset& d = offs[q];
        const int64_t a2 = a + d.da, b2 = b + d.db, c2 = c + d.dc;
        if (a2 < a_min || b2 < 0 || b2 >= nb || c2 < 0 || c2 >= nc) continue;
      }
      if (p[in_step[q]] != val) continue;
      covered |= covers[q];
      const int32_t theirs = o[out_step[q]];
      if (mine == 0) {
        mine = theirs;
        continue;
      }
      if (theirs == mine) continue;
      // A second label: join the two trees, keeping the root found so far for the next ones.
      if (mine_root == 0) mine_root = find_root(parent, mine);
      mine_root = link_roots(parent, mine_root, find_root(parent, theirs));
    }
    return mine_root != 0 ? mine_root : mine;
  };

  // 1. Provisional labels, slab by slab in parallel (labels 1.. local to each slab). The output
  // arrives zeroed, so background is never written (fresh pages of it are never even touched).
  std::vector<uint8_t> row_has_fg(na * nb, 0);
  const PatternTable& table = pattern_table(connectivity);
  int64_t bit_step[13];
  for (int j = 0; j < 13; ++j) {
    const Offset d = bit_offset(j);
    bit_step[j] = (d.da * nb + d.db) * nc + d.dc;
  }
  const int64_t row_bytes = 1 + 8 * ((nc + 63) / 64) + 8;
  parallel_for(threads, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      std::vector<int32_t>& parent = parents[t];
      parent.assign(1, 0);
      std::vector<int64_t>* smallest = raster_walk ? nullptr : &firsts[t];
      if (smallest) smallest->assign(1, INT64_MAX);
      // Two planes of row bitmasks with a zero row before and after each.
      std::vector<uint8_t> planes(2 * (nb + 2) * row_bytes, 0);
      uint8_t* prev = planes.data() + row_bytes;
      uint8_t* cur = prev + (nb + 2) * row_bytes;
      bool binary = true;  // until a second foreground value turns up in this slab
      T first = T(0);
      for (int64_t a = slab[t]; a < slab[t + 1]; ++a) {
        for (int64_t b = 0; b < nb; ++b) {
          const T* row = in + a * sa + b * sb;
          int32_t* orow = out + (a * nb + b) * nc;
          const int64_t row_index = a * logical_stride[0] + b * logical_stride[1];
          int32_t last = 0;  // the label of the row's previous foreground voxel
          // Where the label changes along the row, the voxel's logical index may be its label's smallest.
          auto note_first = [&](int32_t mine, int64_t c) {
            if (mine == last) return;
            last = mine;
            int64_t& f = (*smallest)[mine];
            f = std::min(f, row_index + c * logical_stride[2]);
          };
          if (binary) {
            uint8_t* bits = cur + b * row_bytes;
            bool mixed = false;
            row_bits(row, sc, nc, bits, first, mixed);
            binary = !mixed;
          }
          if (binary) {
            const uint8_t* p0 = prev + (b - 1) * row_bytes;  // rows b-1, b, b+1 of the previous plane
            const uint8_t* p1 = p0 + row_bytes;
            const uint8_t* p2 = p1 + row_bytes;
            const uint8_t* c0 = cur + (b - 1) * row_bytes;  // row b-1 of this plane
            const uint8_t* c1 = c0 + row_bytes;             // this row
            bool any = false;
            for (int64_t w = 0; w * 64 < nc; ++w) {
              uint64_t word;
              std::memcpy(&word, c1 + 1 + 8 * w, 8);
              any |= word != 0;
              for (; word; word &= word - 1) {
                const int64_t c = w * 64 + __builtin_ctzll(word);
                const uint32_t cfg = three_bits(p0, c) | three_bits(p1, c) << 3 | three_bits(p2, c) << 6 |
                                     three_bits(c0, c) << 9 | (three_bits(c1, c) & 1u) << 12;
                const uint32_t e = table.entry[cfg & table.allowed];
                const uint32_t n = e & 7u;
                int32_t* o = orow + c;
                int32_t mine;
                if (n == 0) {
                  mine = int32_t(parent.size());
                  parent.push_back(mine);
                  if (smallest) smallest->push_back(INT64_MAX);
                } else {
                  mine = o[bit_step[(e >> 3) & 15u]];
                  if (n > 1) {
                    int32_t root = find_root(parent, mine);
                    for (uint32_t g = 1; g < n; ++g)
                      root = link_roots(parent, root, find_root(parent, o[bit_step[(e >> (3 + 4 * g)) & 15u]]));
                    mine = root;
                  }
                }
                *o = mine;
                if (smallest) note_first(mine, c);
              }
            }
            if (any) row_has_fg[a * nb + b] = 1;
            continue;
          }
          const bool inner_row = a > slab[t] && b > 0 && b < nb - 1;
          auto visit = [&](int64_t c) {
            const T val = row[c * sc];
            const bool inside = inner_row && c > 0 && c < nc - 1;
            int32_t mine = join(parent, a, b, c, row + c * sc, orow + c, val, slab[t], inside);
            if (mine == 0) {
              mine = int32_t(parent.size());
              parent.push_back(mine);
              if (smallest) smallest->push_back(INT64_MAX);
            }
            orow[c] = mine;
            if (smallest) note_first(mine, c);
          };
          bool any = false;
          if (sc == 1) {
            // Foreground bits of 64 voxels at a time, visited with count-trailing-zeros: background
            // costs no branch per voxel, which on noise would be mispredicted half the time.
            for (int64_t c0 = 0; c0 < nc; c0 += 64) {
              const int64_t len = std::min<int64_t>(64, nc - c0);
              const uint64_t bits0 = nonzero_bits(row + c0, len);
              uint64_t bits = bits0;
              any |= bits0 != 0;
              for (; bits; bits &= bits - 1) visit(c0 + __builtin_ctzll(bits));
            }
          } else {
            for (int64_t c = 0; c < nc; ++c)
              if (row[c * sc] != T(0)) {
                any = true;
                visit(c);
              }
          }
          if (any) row_has_fg[a * nb + b] = 1;
        }
        std::swap(prev, cur);
      }
    }
  });
  // 2. One label space: slab t's label l becomes offset[t] + l; join slabs across boundary planes.
  std::vector<int64_t> offset(threads + 1, 0);
  for (int t = 0; t < threads; ++t) offset[t + 1] = offset[t] + int64_t(parents[t].size()) - 1;
  require(offset[threads] < INT32_MAX, "label: too many provisional labels");
  std::vector<int32_t> parent(offset[threads] + 1);
  parent[0] = 0;
  for (int t = 0; t < threads; ++t)
    for (size_t l = 1; l < parents[t].size(); ++l) parent[offset[t] + l] = int32_t(offset[t] + parents[t][l]);
  // The boundaries' rows in parallel, every thread's unions in the one table (unite_shared): one
  // thread walking every boundary plane took 4.7 ms a plane on 50 % noise, 74 ms of 16 threads'
  // run. A voxel of plane slab[t] joins its neighbours in plane slab[t] - 1 that match its value,
  // less those that are joined already: neighbours adjacent to one that matched (they met in their
  // own slab), and, when the voxel before it on the row holds its value, those that voxel joined.
  int up[NN], ups = 0;
  for (int q = 0; q < NN; ++q)
    if (offs[q].da == -1) up[ups++] = q;
  uint32_t up_covers[NN] = {}, after_same_left = 0;  // bits over up[]
  for (int u = 0; u < ups; ++u) {
    const Offset& d = offs[up[u]];
    for (int v = 0; v < ups; ++v)
      if (covers[up[u]] >> up[v] & 1u) up_covers[u] |= 1u << v;
    if (!adjacent(Offset{d.da, d.db, d.dc + 1}, connectivity)) after_same_left |= 1u << u;
  }
  parallel_for((threads - 1) * nb, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int t = int(1 + r / nb);
      const int64_t a = slab[t], b = r % nb;
      if (!row_has_fg[a * nb + b]) continue;
      const T* row = in + a * sa + b * sb;
      const int32_t* orow = out + (a * nb + b) * nc;
      int32_t last_mine = 0, last_theirs = 0;  // the last union made: runs repeat it
      T left = T(0);
      for (int64_t c = 0; c < nc; ++c) {
        const T val = row[c * sc];
        const uint32_t todo = val == left ? after_same_left : (1u << ups) - 1;
        left = val;
        if (val == T(0)) continue;
        const int32_t mine = int32_t(offset[t] + orow[c]);
        uint32_t covered = 0;
        for (int u = 0; u < ups; ++u) {
          if (!(todo >> u & 1u) || covered >> u & 1u) continue;
          const Offset& d = offs[up[u]];
          const int64_t b2 = b + d.db, c2 = c + d.dc;
          if (b2 < 0 || b2 >= nb || c2 < 0 || c2 >= nc || row[in_step[up[u]] + c * sc] != val) continue;
          covered |= up_covers[u];
          const int32_t theirs = int32_t(offset[t - 1] + out[((a - 1) * nb + b2) * nc + c2]);
          if (mine == last_mine && theirs == last_theirs) continue;
          last_mine = mine, last_theirs = theirs;
          unite_shared(parent.data(), mine, theirs);
        }
      }
    }
  });
  // 3. Roots (each component's first provisional label, so its first voxel in walk order) get 1..N.
  std::vector<int32_t> final_label(parent.size(), 0);
  int32_t count = 0;
  for (size_t g = 1; g < parent.size(); ++g) {
    const int32_t r = find_root(parent, int32_t(g));
    final_label[g] = r == int32_t(g) ? ++count : final_label[r];
  }
  // Each slab's table from its provisional labels to 1..N, with 0 -> 0 so that the loops below have
  // no branch per voxel (noise would mispredict it half the time).
  std::vector<std::vector<int32_t>> slab_label(threads);
  for (int t = 0; t < threads; ++t) {
    slab_label[t].assign(final_label.begin() + offset[t], final_label.begin() + offset[t + 1] + 1);
    slab_label[t][0] = 0;
  }
  // Both passes below visit only rows with foreground: background rows of the output are never
  // touched, as in step 1 (writing them would fault in every page of a sparse mask's labels).
  // The statistics, when asked for and the tables hold every component, are gathered from each row
  // just written, while it is in L1: component_stats would read every row of the labels again.
  const bool with_stats = stats && count <= stats->capacity;
  Volume image;
  if (with_stats && stats->image) image = permuted(*stats->image, order);
  std::vector<StatsTables> parts(with_stats ? threads : 0, StatsTables(with_stats ? count : 0));
  auto relabel = [&] {
    parallel_for(threads, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int32_t* f = slab_label[t].data();
        for (int64_t r = slab[t] * nb; r < slab[t + 1] * nb; ++r) {
          if (!row_has_fg[r]) continue;
          int32_t* orow = out + r * nc;
          for (int64_t c = 0; c < nc; ++c) orow[c] = f[orow[c]];
          if (with_stats)
            add_stats_row(orow, 1, nc, r / nb, r % nb, stats->image ? &image : nullptr, count, parts[t].acc.data(),
                          parts[t].box.data());
        }
      }
    });
    if (with_stats) {
      merge_stats(parts, count, stats->acc, stats->box);
      stats_to_logical_axes(order, count, stats->acc, stats->box);
    }
  };
  if (raster_walk) {
    relabel();
    return count;
  }

  // 4. The walk is not the logical (i, j, k) raster order: number the components by their first voxel
  // in raster order instead, the smallest of their provisional labels' (step 1), and relabel with the
  // composed table (walk number -> raster number). This took a read pass over the labels before.
  std::vector<int64_t> component_first(count + 1, INT64_MAX);
  for (int t = 0; t < threads; ++t)
    for (size_t l = 1; l < firsts[t].size(); ++l) {
      int64_t& f = component_first[final_label[offset[t] + l]];
      f = std::min(f, firsts[t][l]);
    }
  std::vector<int32_t> by_first(count);
  std::iota(by_first.begin(), by_first.end(), 1);
  std::sort(by_first.begin(), by_first.end(),
            [&](int32_t p, int32_t q) { return component_first[p] < component_first[q]; });
  std::vector<int32_t> new_label(count + 1, 0);
  for (int64_t r = 0; r < count; ++r) new_label[by_first[r]] = int32_t(r + 1);
  for (auto& f : slab_label)
    for (int32_t& l : f) l = new_label[l];
  relabel();
  return count;
}

}  // namespace

int64_t label_cpu(const Volume& src, const Volume& dst, int connectivity, const int* order, const LabelStats* stats) {
  int64_t count = 0;
  dispatch_dtype(src.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    count = connectivity == 6    ? label_typed<T, 3>(src, dst, connectivity, order, stats)
            : connectivity == 18 ? label_typed<T, 9>(src, dst, connectivity, order, stats)
                                 : label_typed<T, 13>(src, dst, connectivity, order, stats);
  });
  return count;
}

}  // namespace petfast
