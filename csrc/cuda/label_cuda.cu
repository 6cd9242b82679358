// CUDA twin of cpu/label_cpu.cpp. Union-find with atomicMin unions (the smaller index stays root),
// then an exclusive scan that numbers the components 1..N in the raster
// order of their first voxel: the numbering of the CPU twin, scipy.ndimage.label and cc3d (C order).
// Labels are C-contiguous; the mask may have any strides.
//
// Two paths:
// * 26-connectivity, every 2x2x2 block holding one value (binary masks always): union-find over
//   blocks, as BUF_3D (Allegretti et al. 2020). All voxels of a 2x2x2 block touch under
//   26-connectivity, and two neighbouring blocks join when their facing voxels (a face, an edge or
//   a corner) hold a voxel each, of equal value: one node per 8 voxels. The components are then
//   numbered by a scan over one start bit per voxel (the first voxel of each component).
// * otherwise (6, 18, or blocks holding two values): union-find over voxels, each joining the
//   backward neighbours that its left neighbour does not already join; then every voxel points
//   straight at its root (each component's first voxel, which sets a start flag), the start flags
//   are numbered by the same scan, and every voxel takes its root's number.
// Union-find entries hold parent index + 1 (0 = background).
#include <climits>
#include <utility>

#include "cuda/component_runs.cuh"
#include "cuda/label_neighbours.h"
#include "petfast/ops.h"

namespace petfast {
namespace {

constexpr int kScanBlock = 1024;
constexpr int kFlagsPerThread = int(kLabelFlagsPerScanBlock / kScanBlock);
static_assert(kFlagsPerThread == 128, "the start flags are bits, read as one uint4 per thread");

// Index arithmetic is 32-bit (the dispatcher allows fewer than 2^31 voxels): 64-bit division is
// emulated on the GPU and cost more than the labelling itself on sparse masks. Addresses into the
// mask stay 64-bit, as its strides may span more.
struct Shape3 {
  int n0, n1, n2;
  int64_t s0, s1, s2;  // the mask's element strides
};

__device__ __forceinline__ void coords(int n1, int n2, int64_t v, int& i, int& j, int& k) {
  const unsigned u = unsigned(v), row = u / unsigned(n2);
  k = int(u - row * unsigned(n2));
  i = int(row / unsigned(n1));
  j = int(row - unsigned(i) * unsigned(n1));
}

// (i, j, k) to the next position in raster order: a thread's 4 consecutive voxels or blocks take one
// division, not 4.
__device__ __forceinline__ void next_in_raster(int n1, int n2, int& i, int& j, int& k) {
  if (++k == n2) {
    k = 0;
    if (++j == n1) j = 0, ++i;
  }
}

// One union of a voxel or block, in kUnionOrder: the neighbour's offset, its index q in kNeighbours
// (6-connectivity takes q < 3, 18 q < 9) and, between blocks, the bits of the facing voxels of the
// block itself and of the neighbour.
struct UnionStep {
  int d0, d1, d2, q;
  unsigned char own, other;
};
struct UnionSteps {
  UnionStep step[13];
};
constexpr UnionSteps union_steps() {
  UnionSteps u{};
  for (int r = 0; r < 13; ++r) {
    const int q = kUnionOrder[r], *d = kNeighbours[q];
    u.step[r] = {d[0], d[1], d[2], q, static_cast<unsigned char>(facing(d[0], d[1], d[2])),
                 static_cast<unsigned char>(facing(-d[0], -d[1], -d[2]))};
  }
  return u;
}
__constant__ UnionSteps kUnionSteps = union_steps();

// Root of v. Every entry only ever decreases (atomicMin) and a non-root points below itself, so the
// walk ends even on a stale (L1-cached) read; a stale "root" is caught by unite's atomicMin, which
// returns the current parent. Plain loads keep the walks in L1: volatile loads, which go to L2 on
// every step, made the first H200 run 10x slower than cupyx on dense masks. No compression here
// (it hung a GPU run on 2026-11-28); the finishing kernels point every entry at its root once all
// unions are done.
__device__ __forceinline__ int find_root(const int* parent, int v) {
  for (int q; (q = parent[v] - 1) != v;) v = q;
  return v;
}

// Joins the sets of a and b; returns a member of the joined set near its root (the root when no
// other thread interferes), from which the caller's next union with the same set starts its walk:
// a voxel or block joins up to 13 neighbours, and walking from itself each time repeated the climb.
// As every link points to a smaller index, the returned member is at most a and b.
__device__ int unite(int* parent, int a, int b) {
  while (true) {
    a = find_root(parent, a);
    b = find_root(parent, b);
    if (a == b) return a;
    if (a > b) {
      const int t = a;
      a = b;
      b = t;
    }
    // Hang the larger root b under a, unless another thread re-parented b meanwhile: then join a
    // with what b hung under.
    const int old = atomicMin(parent + b, a + 1);
    if (old == b + 1) return a;
    b = old - 1;
  }
}

// After its unions, node v points straight at `self` (what its last union returned), so that other
// threads' walks through v skip the climb v made. atomicMin keeps every entry decreasing (self is
// in v's set and at most v), which the walks rely on; the plain load first spares the atomic where
// v points there or lower already. In the model it halved the depth left for the finishing walks.
__device__ __forceinline__ void shortcut(int* parent, int v, int self) {
  if (self != v && parent[v] > self + 1) atomicMin(parent + v, self + 1);
}

// Root of v, with every entry on v's path pointed at it, so that later walks through them take one
// step. Only once all unions are done: threads sharing a path then write the same root into it. The
// last entry on the path points at the root already and is not written again: on a dense mask
// most entries are such, and rewriting them was a store per node.
__device__ __forceinline__ int find_and_compress(int* parent, int v) {
  const int root = find_root(parent, v);
  for (int w = v, next; w != root; w = next) {
    next = parent[w] - 1;
    if (next != root) parent[w] = root + 1;
  }
  return root;
}

// ---- statistics gathered while the labels are written ---------------------------------------------

// The final pass of either path hands each thread's voxels, with their labels, to a sink: NoStats,
// or StatsSink, which adds them to component_stats' tables (rows 1..capacity) as runs
// (cuda/component_runs.cuh). Saves component_stats' pass over the labels: the statistics of a
// sparse mask read only its foreground and the image there.
struct NoStats {
  static constexpr bool kOn = false;
};

template <typename T>  // the image's element type (float, unread, without an image)
struct StatsSink {
  static constexpr bool kOn = true;
  const T* image;
  int64_t s0, s1, s2;  // the image's element strides
  double* acc;
  int32_t* box;
  int capacity;

  // Voxel (i, j, k) of `label` joins the thread's run r; r goes to the tables first if it holds
  // another label.
  __device__ void add(Run& r, int label, int i, int j, int k) const {
    if (label <= 0 || label > capacity) return;
    if (label != r.label) {
      if (r.voxels) add_run(r, image != nullptr, acc, box);
      r = Run::of(label);
    }
    r.add(i, j, k);
    if (image) r.add_value(double(image[i * s0 + j * s1 + k * s2]));
  }
  // Every lane of the warp calls it, once per round; `carry` is the warp's carried run.
  __device__ void finish(const Run& r, Run& carry) const { add_warp_runs(r, image != nullptr, acc, box, carry); }
  // Every thread of the block calls it, at the end of the kernel.
  __device__ void finish_block(Run* carries) const { add_carried_runs(carries, image != nullptr, acc, box); }
};

// The grid of a labeller's last pass: `blocks` (one per piece of work) without statistics; with
// them, the blocks that fit on the device at once, which loop over the work carrying their runs.
template <typename Sink>
unsigned last_pass_blocks(int64_t blocks, int threads) {
  return Sink::kOn ? grid_dim(blocks, resident_blocks(threads)) : unsigned(blocks);
}

// ---- voxel path --------------------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ T voxel(const T* in, const Shape3& s, int i, int j, int k) {
  return in[i * s.s0 + j * s.s1 + k * s.s2];
}

// The voxel path's passes and the block path's init, merge, compress and mark give each thread 4
// consecutive voxels or blocks and load all 4 before using any.
// With one voxel per thread an H200 holds about 1 MB of loads in flight (2048 threads x 132 SMs x 4
// bytes), a third of what its memory needs to stream: each pass over the int32 labels took ~0.2 ms
// where a copy of them takes 0.1 ms.
constexpr int kPerThread = 4;
__device__ __forceinline__ int64_t first_of_four() { return (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * kPerThread; }
__device__ __forceinline__ int64_t stride_of_four() { return int64_t(gridDim.x) * blockDim.x * kPerThread; }
// The mask's values at voxels v0..v0+3 (0 from n on).
template <typename T>
__device__ __forceinline__ void load_values(const T* in, const Shape3& s, int64_t v0, int64_t n, T (&x)[kPerThread]) {
  int i, j, k;
  coords(s.n1, s.n2, v0, i, j, k);
#pragma unroll
  for (int r = 0; r < kPerThread; ++r) {
    x[r] = v0 + r < n ? voxel(in, s, i, j, k) : T(0);
    next_in_raster(s.n1, s.n2, i, j, k);
  }
}

// The union-find entries of voxels v0..v0+3, read only where the mask holds foreground (background
// entries are 0, as the init pass left them): on a sparse mask a pass reads the mask's byte per
// voxel instead of the entries' 4.
template <typename T>
__device__ __forceinline__ void load_entries(const T* in, const Shape3& s, const int* out, int64_t v0, int64_t n,
                                             int (&entry)[kPerThread]) {
  T values[kPerThread];
  load_values(in, s, v0, n, values);
#pragma unroll
  for (int r = 0; r < kPerThread; ++r) entry[r] = values[r] != T(0) ? out[v0 + r] : 0;
}

// x[q] for a q the compiler does not know: selects among registers, where indexing the array would
// put it in local memory.
template <typename T>
__device__ __forceinline__ T pick(const T (&x)[kPerThread], int q) {
  static_assert(kPerThread == 4, "pick() selects among 4");
  return q == 0 ? x[0] : (q == 1 ? x[1] : (q == 2 ? x[2] : x[3]));
}

template <typename T>
__global__ void init_kernel(const T* __restrict__ in, Shape3 s, int* out) {
  const int64_t n = int64_t(s.n0) * s.n1 * s.n2;
  for (int64_t v0 = first_of_four(); v0 < n; v0 += stride_of_four()) {
    T values[kPerThread];
    load_values(in, s, v0, n, values);
#pragma unroll
    for (int r = 0; r < kPerThread; ++r) {
      if (v0 + r < n) out[v0 + r] = values[r] != T(0) ? int(v0 + r + 1) : 0;
    }
  }
}

// When the left neighbour (0, 0, -1) holds the same value, every backward neighbour with dk <= 0
// is also a backward neighbour of the left one, which joins them itself: with 26-connectivity only
// the left one and the 4 at dk = +1 remain (5 unions instead of 13), with 18 the left one and 4
// (5 instead of 9). 6-connectivity has no such overlap. Bits over kNeighbours' order.
constexpr unsigned kAfterSameLeft26 = (1u << 0) | (1u << 4) | (1u << 8) | (1u << 10) | (1u << 12);
constexpr unsigned kAfterSameLeft18 = (1u << 0) | (1u << 4) | (1u << 5) | (1u << 6) | (1u << 8);

template <typename T>
__global__ void merge_kernel(const T* __restrict__ in, Shape3 s, int* out, int connectivity) {
  const int64_t n = int64_t(s.n0) * s.n1 * s.n2;
  const int count = connectivity == 6 ? 3 : (connectivity == 18 ? 9 : 13);
  const unsigned after_same_left = connectivity == 6 ? 0x7u : (connectivity == 18 ? kAfterSameLeft18 : kAfterSameLeft26);
  for (int64_t v0 = first_of_four(); v0 < n; v0 += stride_of_four()) {
    // The 4 voxels' values, from the mask: a quarter of the bytes of their int32 entries, which
    // only told background (0) from foreground here.
    T values[kPerThread];
    load_values(in, s, v0, n, values);
    int i, j, k;  // of voxel v0 + q, stepped along with q (one division per 4 voxels)
    coords(s.n1, s.n2, v0, i, j, k);
    for (int q = 0; q < kPerThread; ++q, next_in_raster(s.n1, s.n2, i, j, k)) {
      const T val = pick(values, q);
      if (val == T(0)) continue;
      const int v = int(v0 + q);
      const unsigned todo = k > 0 && voxel(in, s, i, j, k - 1) == val ? after_same_left : 0x1fffu;
      int self = v;  // walks to this voxel's root start here
#pragma unroll
      for (int r = 0; r < 13; ++r) {
        const UnionStep& u = kUnionSteps.step[r];
        if (u.q >= count || !((todo >> u.q) & 1u)) continue;
        const int i2 = i + u.d0, j2 = j + u.d1, k2 = k + u.d2;
        if (i2 < 0 || j2 < 0 || j2 >= s.n1 || k2 < 0 || k2 >= s.n2) continue;
        if (voxel(in, s, i2, j2, k2) != val) continue;
        self = unite(out, self, (i2 * s.n1 + j2) * s.n2 + k2);
      }
      shortcut(out, v, self);
    }
  }
}

// Every voxel to its root, and a start flag for each root, which is its component's first voxel (a
// union keeps the smaller index as root).
template <typename T>
__global__ void voxel_compress_kernel(const T* __restrict__ in, Shape3 s, int* out, unsigned* starts) {
  const int64_t n = int64_t(s.n0) * s.n1 * s.n2;
  for (int64_t v0 = first_of_four(); v0 < n; v0 += stride_of_four()) {
    int entry[kPerThread];
    load_entries(in, s, out, v0, n, entry);
#pragma unroll
    for (int r = 0; r < kPerThread; ++r) {
      const int v = int(v0 + r);
      if (entry[r] == 0) continue;
      if (entry[r] == v + 1) {
        atomicOr(starts + (v >> 5), 1u << (v & 31));
        continue;
      }
      find_and_compress(out, v);
    }
  }
}

// Every voxel takes its root's number: a root holds it negated (number_starts_kernel), every other
// voxel points straight at its root. Each thread writes only its own voxels and reads only roots,
// which their own threads make positive meanwhile: hence the magnitude. One pass, where walking to
// the roots and then flipping the signs took two. The rounds start from the warp's first voxel, so
// that the lanes of a warp run them together (the sink's warp sums).
template <typename T, typename Sink>
__global__ void voxel_labels_kernel(const T* __restrict__ in, Shape3 s, int* out, Sink sink) {
  __shared__ Run carries[Sink::kOn ? kMaxWarps : 1];
  if constexpr (Sink::kOn) clear_carry(carries);
  const int64_t n = int64_t(s.n0) * s.n1 * s.n2;
  const int lane = threadIdx.x & 31;
  for (int64_t w0 = first_of_four() - kPerThread * lane; w0 < n; w0 += stride_of_four()) {
    const int64_t v0 = w0 + kPerThread * lane;
    int entry[kPerThread], label[kPerThread];
    load_entries(in, s, out, v0, n, entry);
#pragma unroll
    for (int r = 0; r < kPerThread; ++r) {
      label[r] = entry[r] < 0 ? -entry[r] : (entry[r] > 0 ? abs(out[entry[r] - 1]) : 0);
      if (entry[r] != 0) out[v0 + r] = label[r];
    }
    if constexpr (Sink::kOn) {
      Run run = Run::of(0);
      int i, j, k;
      coords(s.n1, s.n2, v0, i, j, k);
#pragma unroll
      for (int r = 0; r < kPerThread; ++r) {
        sink.add(run, label[r], i, j, k);
        next_in_raster(s.n1, s.n2, i, j, k);
      }
      sink.finish(run, carries[warp_in_block()]);
    }
  }
  if constexpr (Sink::kOn) sink.finish_block(carries);
}

// ---- scans ---------------------------------------------------------------------------------------

__device__ __forceinline__ int block_exclusive_scan(int flag, int* warp_sums, int* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int x = flag;
  for (int d = 1; d < 32; d <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, x, d);
    if (lane >= d) x += y;
  }
  if (lane == 31) warp_sums[warp] = x;
  __syncthreads();
  if (warp == 0) {
    int w = lane < (blockDim.x >> 5) ? warp_sums[lane] : 0;
    for (int d = 1; d < 32; d <<= 1) {
      const int y = __shfl_up_sync(0xffffffffu, w, d);
      if (lane >= d) w += y;
    }
    warp_sums[lane] = w;  // inclusive over warps
  }
  __syncthreads();
  const int before = (warp > 0 ? warp_sums[warp - 1] : 0) + x - flag;
  if (total) *total = warp_sums[(blockDim.x >> 5) - 1];
  return before;
}

// One block turns the per-block counts into exclusive offsets; the grand total goes last.
__global__ void scan_counts_kernel(int* block_counts, int64_t blocks) {
  __shared__ int warp_sums[32];
  __shared__ int carry;
  if (threadIdx.x == 0) carry = 0;
  __syncthreads();
  for (int64_t base = 0; base < blocks; base += kScanBlock) {
    const int64_t b = base + threadIdx.x;
    const int c = b < blocks ? block_counts[b] : 0;
    int total;
    const int before = block_exclusive_scan(c, warp_sums, &total);
    if (b < blocks) block_counts[b] = carry + before;
    __syncthreads();
    if (threadIdx.x == 0) carry += total;
    __syncthreads();
  }
  if (threadIdx.x == 0) block_counts[blocks] = carry;
}

// ---- block path ----------------------------------------------------------------------------------

struct Blocks {
  Shape3 s;
  int b0, b1, b2;  // blocks per axis
};

// The occupancy bytes of blocks b0..b0+3 (b0 a multiple of 4, so one aligned 4-byte load; the
// scratch is 16-byte aligned), those from nb on zeroed: block init writes no padding.
__device__ __forceinline__ unsigned occupancy_of_four(const uint8_t* occupancy, int64_t b0, int64_t nb) {
  const unsigned four = *reinterpret_cast<const unsigned*>(occupancy + b0);
  return nb - b0 >= 4 ? four : four & ((1u << (8 * (nb - b0))) - 1u);
}

// Bit q = 4 di + 2 dj + dk of a block's occupancy is voxel (2 bi + di, 2 bj + dj, 2 bk + dk): the
// lowest set bit is the block's first voxel in raster order.
__device__ __forceinline__ int voxel_of(const Blocks& g, int bi, int bj, int bk, int q) {
  return ((2 * bi + (q >> 2)) * g.s.n1 + 2 * bj + ((q >> 1) & 1)) * g.s.n2 + 2 * bk + (q & 1);
}

template <typename T>
__device__ __forceinline__ T value_at(const T* in, const Blocks& g, int bi, int bj, int bk, int q) {
  return voxel(in, g.s, 2 * bi + (q >> 2), 2 * bj + ((q >> 1) & 1), 2 * bk + (q & 1));
}

// 4 consecutive blocks per thread, as the later passes take them: the thread loads their 32 voxels
// before it looks at any, and stores their occupancy bytes as one 4-byte word (blocks from nb on get
// 0, in the scratch's padding). One block per thread, each loading 8 scattered voxels, took 0.10 ms
// on a whole-body mask in the H200 profile, where reading the mask once takes about 0.02 ms.
template <typename T>
__global__ void block_init_kernel(const T* __restrict__ in, Blocks g, int* parent, int* first, uint8_t* occupancy,
                                  int* mixed, int* not_binary) {
  const int64_t nb = int64_t(g.b0) * g.b1 * g.b2;
  for (int64_t b0 = first_of_four(); b0 < nb; b0 += stride_of_four()) {
    int bi, bj, bk;
    coords(g.b1, g.b2, b0, bi, bj, bk);
    T v[kPerThread][8];  // each block's voxels, in bit order (0 outside the volume)
#pragma unroll
    for (int r = 0; r < kPerThread; ++r) {
#pragma unroll
      for (int q = 0; q < 8; ++q) {
        const bool inside = b0 + r < nb && 2 * bi + (q >> 2) < g.s.n0 && 2 * bj + ((q >> 1) & 1) < g.s.n1 &&
                            2 * bk + (q & 1) < g.s.n2;
        v[r][q] = inside ? value_at(in, g, bi, bj, bk, q) : T(0);
      }
      next_in_raster(g.b1, g.b2, bi, bj, bk);
    }
    unsigned four = 0;
#pragma unroll
    for (int r = 0; r < kPerThread; ++r) {
      unsigned bits = 0;
      T value = T(0);
      bool two_values = false;
#pragma unroll
      for (int q = 0; q < 8; ++q) {
        if (v[r][q] == T(0)) continue;
        if (bits == 0) value = v[r][q];
        two_values |= v[r][q] != value;
        bits |= 1u << q;
      }
      four |= bits << (8 * r);
      // parent and first of an empty block are never read (every later pass tests the occupancy
      // first): a sparse mask writes 2 x 4 bytes per occupied block only, not per block.
      if (bits) {
        const int b = int(b0 + r);
        parent[b] = b + 1;
        first[b] = INT_MAX;  // above any voxel index, for atomicMin
      }
      if (two_values && *mixed == 0) *mixed = 1;  // read first, as not_binary below
      // Read first: once one block has set it, the others only read (a write from every block of
      // a label map would queue on the one address).
      if (bits && value != T(1) && *not_binary == 0) *not_binary = 1;
    }
    *reinterpret_cast<unsigned*>(occupancy + b0) = four;  // b0 is a multiple of 4; the scratch 16-byte aligned
  }
}

// The block path's kernels are launched before the host knows whether every block holds one value
// (waiting for block init's verdict cost a round trip on every mask): where one did not (`mixed`),
// they return at once and the voxel path labels the mask instead.
template <typename T>
__global__ void block_merge_kernel(const T* __restrict__ in, Blocks g, int* parent, const uint8_t* __restrict__ occupancy,
                                   const int* __restrict__ not_binary, const int* __restrict__ mixed) {
  if (*mixed) return;
  const int64_t nb = int64_t(g.b0) * g.b1 * g.b2;
  // Every value 1 (bool and 0/1 masks): occupied neighbours hold the same value, so the mask is not
  // read again.
  const bool compare = *not_binary != 0;
  for (int64_t b0 = first_of_four(); b0 < nb; b0 += stride_of_four()) {
    const unsigned four = occupancy_of_four(occupancy, b0, nb);
    for (int q = 0; q < kPerThread; ++q) {
      const unsigned bits = (four >> (8 * q)) & 0xffu;
      if (bits == 0) continue;
      const int b = int(b0 + q);
      int bi, bj, bk;
      coords(g.b1, g.b2, b, bi, bj, bk);
      const T val = compare ? value_at(in, g, bi, bj, bk, __ffs(bits) - 1) : T(1);
      int self = b;  // walks to this block's root start here
#pragma unroll
      for (int r = 0; r < 13; ++r) {
        const UnionStep& u = kUnionSteps.step[r];
        const int i2 = bi + u.d0, j2 = bj + u.d1, k2 = bk + u.d2;
        if (i2 < 0 || j2 < 0 || j2 >= g.b1 || k2 < 0 || k2 >= g.b2) continue;
        if (!(bits & u.own)) continue;
        const int b2 = (i2 * g.b1 + j2) * g.b2 + k2;
        const unsigned other = occupancy[b2];
        if (!(other & u.other)) continue;
        if (compare && value_at(in, g, i2, j2, k2, __ffs(other) - 1) != val) continue;
        self = unite(parent, self, b2);
      }
      shortcut(parent, b, self);
    }
  }
}

// Every block to its root, and each root's `first` to the smallest first voxel of its blocks. The
// root is the component's first block (unions keep the smaller index), so the component's first
// voxel lies in the root's plane of blocks: only blocks there compete, and a thread takes the
// smallest over its blocks of one root before its atomicMin. When every block of a component took
// its turn at the one address, the atomics queued at the L2: 6.5 M of them on 50 % noise (one
// giant component), about 0.7 ns each, the 4.8 ms this pass took in the H200 profile.
__global__ void block_compress_kernel(Blocks g, int* parent, const uint8_t* __restrict__ occupancy, int* first,
                                      const int* __restrict__ mixed) {
  if (*mixed) return;
  const int64_t nb = int64_t(g.b0) * g.b1 * g.b2;
  const unsigned plane = unsigned(g.b1) * unsigned(g.b2);
  for (int64_t b0 = first_of_four(); b0 < nb; b0 += stride_of_four()) {
    const unsigned four = occupancy_of_four(occupancy, b0, nb);
    int root = -1, smallest = INT_MAX;  // smallest first voxel of this thread's blocks of `root`
    for (int q = 0; q < kPerThread; ++q) {
      const unsigned bits = (four >> (8 * q)) & 0xffu;
      if (bits == 0) continue;
      const int b = int(b0 + q), r = find_and_compress(parent, b);
      if (r != root) {
        if (smallest != INT_MAX) atomicMin(first + root, smallest);
        root = r, smallest = INT_MAX;
      }
      int bi, bj, bk;
      coords(g.b1, g.b2, b, bi, bj, bk);
      if (unsigned(bi) == unsigned(r) / plane) smallest = min(smallest, voxel_of(g, bi, bj, bk, __ffs(bits) - 1));
    }
    if (smallest != INT_MAX) atomicMin(first + root, smallest);
  }
}

// Start flags are bits, voxel v at bit v % 32 of word v / 32: the memset and the two scans move
// n / 8 bytes each, not n (a byte per voxel was a third of the sparse path's memory traffic).
__global__ void mark_starts_kernel(int64_t nb, const int* parent, const int* first, const uint8_t* __restrict__ occupancy,
                                   unsigned* starts, const int* __restrict__ mixed) {
  if (*mixed) return;  // no start flags: the scans that follow number nothing
  for (int64_t b0 = first_of_four(); b0 < nb; b0 += stride_of_four()) {
    const unsigned four = occupancy_of_four(occupancy, b0, nb);
    for (int q = 0; q < kPerThread; ++q) {
      const int b = int(b0 + q);
      if (((four >> (8 * q)) & 0xffu) && parent[b] == b + 1) atomicOr(starts + (first[b] >> 5), 1u << (first[b] & 31));
    }
  }
}

__device__ __forceinline__ int count_flags(const uint4& f) { return __popc(f.x) + __popc(f.y) + __popc(f.z) + __popc(f.w); }

__global__ void count_starts_kernel(const uint4* __restrict__ starts, int* block_counts) {
  __shared__ int warp_sums[32];
  int total;
  block_exclusive_scan(count_flags(starts[int64_t(blockIdx.x) * kScanBlock + threadIdx.x]), warp_sums, &total);
  if (threadIdx.x == 0) block_counts[blockIdx.x] = total;
}

// Numbers the start voxels 1..N in raster order and hands each its number.
template <typename Assign>
__global__ void number_starts_kernel(const uint4* __restrict__ starts, const int* block_offsets, Assign assign) {
  __shared__ int warp_sums[32];
  const uint4 f = starts[int64_t(blockIdx.x) * kScanBlock + threadIdx.x];
  int label = block_offsets[blockIdx.x] + 1 + block_exclusive_scan(count_flags(f), warp_sums, nullptr);
  const unsigned words[4] = {f.x, f.y, f.z, f.w};
  const int64_t v0 = (int64_t(blockIdx.x) * kScanBlock + threadIdx.x) * kFlagsPerThread;
#pragma unroll
  for (int w = 0; w < 4; ++w) {
    for (unsigned bits = words[w]; bits; bits &= bits - 1) {  // set bits, lowest (first voxel) first
      assign(int(v0 + 32 * w + __ffs(bits) - 1), label++);
    }
  }
}

// Block path: the number goes to the component's root block (in `first`, no longer needed).
struct NumberRootBlock {
  Blocks g;
  const int* parent;
  int* label_of_root;
  __device__ void operator()(int v, int label) const {
    int i, j, k;
    coords(g.s.n1, g.s.n2, v, i, j, k);
    label_of_root[parent[((i / 2) * g.b1 + j / 2) * g.b2 + k / 2] - 1] = label;
  }
};

// Voxel path: the start voxel is the root; it holds its number negated until voxel_labels_kernel.
struct NumberRootVoxel {
  int* out;
  __device__ void operator()(int v, int label) const { out[v] = -label; }
};

// Counts the start flags per scan block, turns the counts into offsets and numbers the starts.
template <typename Assign>
void number_starts(const unsigned* starts, int64_t flag_blocks, int* counts, Assign assign, cudaStream_t stream) {
  const auto* flags = reinterpret_cast<const uint4*>(starts);
  count_starts_kernel<<<unsigned(flag_blocks), kScanBlock, 0, stream>>>(flags, counts);
  scan_counts_kernel<<<1, kScanBlock, 0, stream>>>(counts, flag_blocks);
  number_starts_kernel<Assign><<<unsigned(flag_blocks), kScanBlock, 0, stream>>>(flags, counts, assign);
}

// A CUDA block per row (bi, bj) of 2x2x2 blocks (with statistics, the blocks loop over the rows),
// a thread per block: it loads the block's label once and writes the block's voxels in the 4 voxel
// rows the block row covers, two neighbours along k as one 8-byte store where the rows allow it
// (coalesced, no per-voxel division). A CUDA block per voxel row loaded each label 8 times, in 4x as
// many short CUDA blocks. The rounds start from the warp's first block, so that the lanes of a warp
// run them together (the sink's warp sums).
template <typename Sink>
__global__ void block_labels_kernel(Blocks g, const int* __restrict__ parent, const uint8_t* __restrict__ occupancy,
                                    const int* __restrict__ label_of_root, int* out, bool pairs, Sink sink,
                                    const int* __restrict__ mixed) {
  if (*mixed) return;  // every thread of the block: none waits at the carried runs' barrier
  __shared__ Run carries[Sink::kOn ? kMaxWarps : 1];
  if constexpr (Sink::kOn) clear_carry(carries);
  for (int brow = blockIdx.x; brow < g.b0 * g.b1; brow += gridDim.x) {
    const int bi = brow / g.b1, bj = brow - bi * g.b1;
    for (int base = threadIdx.x & ~31; base < g.b2; base += blockDim.x) {
      const int bk = base + (threadIdx.x & 31), b = brow * g.b2 + bk;
      const unsigned bits = bk < g.b2 ? occupancy[b] : 0u;
      const int label = bits ? label_of_root[parent[b] - 1] : 0;
      if constexpr (Sink::kOn) {
        Run run = Run::of(0);
        for (int q = 0; q < 8; ++q)
          if ((bits >> q) & 1u) sink.add(run, label, 2 * bi + (q >> 2), 2 * bj + ((q >> 1) & 1), 2 * bk + (q & 1));
        sink.finish(run, carries[warp_in_block()]);
      }
      if (bk >= g.b2) continue;
      for (int di = 0; di < 2 && 2 * bi + di < g.s.n0; ++di) {
        for (int dj = 0; dj < 2 && 2 * bj + dj < g.s.n1; ++dj) {
          int* voxels = out + (int64_t(2 * bi + di) * g.s.n1 + 2 * bj + dj) * g.s.n2 + 2 * bk;
          const unsigned row_bits = bits >> (4 * di + 2 * dj);
          const int first = row_bits & 1u ? label : 0, second = row_bits & 2u ? label : 0;
          if (pairs) {
            *reinterpret_cast<int2*>(voxels) = make_int2(first, second);
          } else {
            voxels[0] = first;
            if (2 * bk + 1 < g.s.n2) voxels[1] = second;
          }
        }
      }
    }
  }
  if constexpr (Sink::kOn) sink.finish_block(carries);
}

unsigned int blocks_for(int64_t n) { return grid_dim((n + 255) / 256, 1 << 20); }

// The values at a and b (b may be null), with one wait for the stream.
std::pair<int, int> read_counts(const int* a, const int* b, cudaStream_t stream) {
  int values[2] = {0, 0};
  cuda_check(cudaGetLastError(), "label kernels launch");
  cuda_check(cudaMemcpyAsync(values, a, sizeof(int), cudaMemcpyDeviceToHost, stream), "label count copy");
  if (b) cuda_check(cudaMemcpyAsync(values + 1, b, sizeof(int), cudaMemcpyDeviceToHost, stream), "label count copy");
  cuda_check(cudaStreamSynchronize(stream), "label");
  return {values[0], values[1]};
}

// Calls launch(sink) with the sink the statistics ask for (NoStats without), the tables initialised.
template <typename Launch>
void with_sink(const LabelStats* stats, cudaStream_t stream, Launch launch) {
  if (!stats) return launch(NoStats{});
  init_stats(stats->capacity + 1, stats->acc, stats->box, stream);
  const Volume* image = stats->image;
  if (!image) return launch(StatsSink<float>{nullptr, 0, 0, 0, stats->acc, stats->box, int(stats->capacity)});
  dispatch_dtype(image->dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    launch(StatsSink<T>{static_cast<const T*>(image->data), image->strides[0], image->strides[1], image->strides[2],
                        stats->acc, stats->box, int(stats->capacity)});
  });
}

}  // namespace

int64_t label_cuda(const Volume& src, const Volume& dst, int connectivity, const Volume& scratch, const LabelStats* stats,
                   uintptr_t stream_handle) {
  DeviceGuard guard(src.device);
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  require(src.size() < INT32_MAX, "internal: label_cuda indexes voxels with int32");
  require(reinterpret_cast<uintptr_t>(scratch.data) % 16 == 0, "internal: label scratch must be 16-byte aligned");
  const Shape3 s{int(src.shape[0]), int(src.shape[1]), int(src.shape[2]), src.strides[0], src.strides[1], src.strides[2]};
  const LabelScratchLayout layout = label_scratch_layout(src.shape);
  require(scratch.dtype == DType::Int32 && scratch.size() >= layout.total, "internal: label scratch too small");
  const int64_t n = src.size();
  int* base = static_cast<int*>(scratch.data);
  int* out = static_cast<int*>(dst.data);
  int* counts = base + layout.counts;
  auto* starts = reinterpret_cast<unsigned*>(base + layout.starts);
  const int64_t flag_blocks = (layout.total - layout.starts) * 32 / kLabelFlagsPerScanBlock;
  cuda_check(cudaMemsetAsync(starts, 0, flag_blocks * kLabelFlagsPerScanBlock / 8, stream), "label memset");

  if (connectivity == 26) {
    const Blocks g{s, (s.n0 + 1) / 2, (s.n1 + 1) / 2, (s.n2 + 1) / 2};
    const int64_t nb = int64_t(g.b0) * g.b1 * g.b2;
    const unsigned fours = blocks_for((nb + kPerThread - 1) / kPerThread);
    int *mixed = base + layout.mixed, *not_binary = base + layout.not_binary, *parent = base + layout.parent,
        *first = base + layout.first;
    auto* occupancy = reinterpret_cast<uint8_t*>(base + layout.occupancy);
    cuda_check(cudaMemsetAsync(mixed, 0, 2 * sizeof(int), stream), "label memset");  // mixed, not_binary
    dispatch_dtype(src.dtype, [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      block_init_kernel<T><<<fours, 256, 0, stream>>>(static_cast<const T*>(src.data), g, parent, first, occupancy,
                                                      mixed, not_binary);
    });
    dispatch_dtype(src.dtype, [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      block_merge_kernel<T><<<fours, 256, 0, stream>>>(static_cast<const T*>(src.data), g, parent, occupancy, not_binary,
                                                       mixed);
    });
    block_compress_kernel<<<fours, 256, 0, stream>>>(g, parent, occupancy, first, mixed);
    mark_starts_kernel<<<fours, 256, 0, stream>>>(nb, parent, first, occupancy, starts, mixed);
    number_starts(starts, flag_blocks, counts, NumberRootBlock{g, parent, first}, stream);
    const bool pairs = s.n2 % 2 == 0 && reinterpret_cast<uintptr_t>(out) % alignof(int2) == 0;
    with_sink(stats, stream, [&](auto sink) {
      using Sink = decltype(sink);
      block_labels_kernel<Sink><<<last_pass_blocks<Sink>(int64_t(g.b0) * g.b1, 128), 128, 0, stream>>>(
          g, parent, occupancy, first, out, pairs, sink, mixed);
    });
    const auto [count, was_mixed] = read_counts(counts + flag_blocks, mixed, stream);
    if (!was_mixed) return count;  // every block held one value: the labels are written
  }

  const unsigned grid = blocks_for((n + kPerThread - 1) / kPerThread);
  dispatch_dtype(src.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* in = static_cast<const T*>(src.data);
    init_kernel<T><<<grid, 256, 0, stream>>>(in, s, out);
    merge_kernel<T><<<grid, 256, 0, stream>>>(in, s, out, connectivity);
    voxel_compress_kernel<T><<<grid, 256, 0, stream>>>(in, s, out, starts);
    number_starts(starts, flag_blocks, counts, NumberRootVoxel{out}, stream);
    with_sink(stats, stream, [&](auto sink) {
      using Sink = decltype(sink);
      voxel_labels_kernel<T, Sink><<<last_pass_blocks<Sink>(grid, 256), 256, 0, stream>>>(in, s, out, sink);
    });
  });
  return read_counts(counts + flag_blocks, nullptr, stream).first;
}

}  // namespace petfast
