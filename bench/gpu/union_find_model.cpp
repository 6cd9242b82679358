// A model of the labeller's union-find merge on a GPU (csrc/cuda/label_cuda.cu), to weigh changes to
// the order of the unions without hardware. It counts work, it does not time anything:
//   * nodes: voxels (voxel path) or 2x2x2 blocks (26-connectivity block path) in raster order, each
//     lane taking PER_LANE consecutive nodes one after the other (4, as the kernels do), 32 lanes
//     to a warp; `warps` warps resident at once, the next admitted as one retires;
//   * each tick, every resident warp (in random order) makes its next union step in lockstep: all
//     its lanes walk to their roots on the state before any lane's atomicMin, then the atomics land
//     lane by lane, a lane whose atomic lost retrying on the fresh state (as unite() does);
//   * walks continue from the member the previous union returned, and each node's unions end with
//     the kernel's shortcut (SHORTCUT=0 leaves it out).
// Reported: parent loads of all walks ("walk"), the sum over warp steps of the slowest lane's loads
// (what a warp waits for), atomics, the depth left for the finishing walks (sum; sum over warps of
// the worst lane), and the number of components (roots), which must equal scipy's. For the block
// path also the most atomicMins the compress pass makes on one root's `first` entry (atomics on one
// address are served one at a time): from every occupied block, and as the kernel makes them now
// (blocks in the root's plane of blocks only, a lane's blocks of one root combined); and the most
// atomics the merge makes on one entry.
//
//   g++ -O2 -std=c++17 -Icsrc bench/gpu/union_find_model.cpp -o /tmp/union_find_model
//   cd bench && python -c "from test_bench_components import *; r = np.random.default_rng(0)
//     m = ccl_cases({'noise50': (r.random((326, 400, 400)) < .5).astype(np.uint8)})
//     [m[k].tofile(f'/tmp/{k}.u8') for k in m]" && cd ..
//   /tmp/union_find_model /tmp/noise50.u8 326 400 400 block 26 plane 4096  # [PER_LANE=4] [SHORTCUT=1] [SEED=1]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "cuda/label_neighbours.h"  // the kernel's kNeighbours, facing() and kUnionOrder

using petfast::facing;
using petfast::kNeighbours;

namespace {

const int kLeftFirst[13] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};  // as the kernels were until 2026-11-29
const int* const kPlaneFirst = petfast::kUnionOrder;

std::vector<int> parent;

int find_root(int v, long long& loads) {
  for (; parent[v] != v; ++loads) v = parent[v];
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 9) {
    std::fprintf(stderr, "usage: %s MASK.u8 N0 N1 N2 block|voxel CONNECTIVITY left|plane WARPS [PER_LANE=4] [SHORTCUT=1] [SEED=1]\n",
                 argv[0]);
    return 2;
  }
  const int n0 = std::atoi(argv[2]), n1 = std::atoi(argv[3]), n2 = std::atoi(argv[4]);
  const bool blocks = std::strcmp(argv[5], "block") == 0;
  const int connectivity = std::atoi(argv[6]), count = connectivity == 6 ? 3 : connectivity == 18 ? 9 : 13;
  const int* order = std::strcmp(argv[7], "plane") == 0 ? kPlaneFirst : kLeftFirst;
  const size_t warps = std::strtoul(argv[8], nullptr, 10);
  const int per_lane = argc > 9 ? std::atoi(argv[9]) : 4;
  const bool shortcut = argc < 11 || std::atoi(argv[10]) != 0;
  std::mt19937 rng(argc > 11 ? std::atoi(argv[11]) : 1);
  if (per_lane < 1) {
    std::fprintf(stderr, "PER_LANE must be at least 1\n");
    return 2;
  }
  if (blocks && connectivity != 26) {
    std::fprintf(stderr, "the block path is 26-connectivity only\n");
    return 2;
  }

  std::vector<unsigned char> mask(size_t(n0) * n1 * n2);
  FILE* f = std::fopen(argv[1], "rb");
  if (!f || std::fread(mask.data(), 1, mask.size(), f) != mask.size()) {
    std::fprintf(stderr, "cannot read %zu bytes from %s\n", mask.size(), argv[1]);
    return 2;
  }
  std::fclose(f);

  // Nodes: voxels holding their value, or blocks holding their occupancy bits (bit 4 di + 2 dj + dk).
  const int m0 = blocks ? (n0 + 1) / 2 : n0, m1 = blocks ? (n1 + 1) / 2 : n1, m2 = blocks ? (n2 + 1) / 2 : n2;
  std::vector<unsigned> node(size_t(m0) * m1 * m2, 0);
  for (int i = 0; i < n0; ++i)
    for (int j = 0; j < n1; ++j)
      for (int k = 0; k < n2; ++k) {
        const unsigned char v = mask[(size_t(i) * n1 + j) * n2 + k];
        if (!v) continue;
        if (blocks) node[(size_t(i / 2) * m1 + j / 2) * m2 + k / 2] |= 1u << (4 * (i & 1) + 2 * (j & 1) + (k & 1));
        else node[(size_t(i) * m1 + j) * m2 + k] = v;
      }
  const size_t n = node.size();
  parent.resize(n);
  std::iota(parent.begin(), parent.end(), 0);
  std::vector<int> self(parent);

  // The neighbour node b joins at union step r, or -1 (label_cuda.cu's merge kernels).
  const unsigned after_same_left = connectivity == 6 ? 0x7u : connectivity == 18 ? 0x171u : 0x1511u;
  auto partner = [&](size_t b, int r) -> int {
    const int q = order[r];
    if (q >= count || !node[b]) return -1;
    const int i = int(b / (size_t(m1) * m2)), j = int(b / m2 % m1), k = int(b % m2);
    const int i2 = i + kNeighbours[q][0], j2 = j + kNeighbours[q][1], k2 = k + kNeighbours[q][2];
    if (i2 < 0 || j2 < 0 || j2 >= m1 || k2 < 0 || k2 >= m2) return -1;
    const size_t o = (size_t(i2) * m1 + j2) * m2 + k2;
    if (blocks) {
      const bool touch = (node[b] & facing(kNeighbours[q][0], kNeighbours[q][1], kNeighbours[q][2])) &&
                         (node[o] & facing(-kNeighbours[q][0], -kNeighbours[q][1], -kNeighbours[q][2]));
      return touch ? int(o) : -1;
    }
    const unsigned todo = k > 0 && node[b - 1] == node[b] ? after_same_left : 0x1fffu;
    return ((todo >> q) & 1u) && node[o] == node[b] ? int(o) : -1;
  };

  long long loads = 0, warp_loads = 0, atomics = 0;
  std::vector<long long> atomics_at(n, 0);  // the merge's atomics per entry
  std::vector<std::pair<size_t, int>> resident;  // (warp, next step: node step / 13 of each lane, union step % 13)
  size_t next = 0;
  const size_t warp_nodes = size_t(32) * per_lane, total_warps = (n + warp_nodes - 1) / warp_nodes, steps = 13 * per_lane;
  auto node_of = [&](size_t w, int lane, int q) { return w * warp_nodes + size_t(lane) * per_lane + q; };
  for (;;) {
    while (resident.size() < warps && next < total_warps) resident.push_back({next++, 0});
    if (resident.empty()) break;
    std::shuffle(resident.begin(), resident.end(), rng);
    for (auto& [w, step] : resident) {
      const int q = step / 13, r = step % 13;
      int lane_node[32], a[32], b[32];
      long long lane_loads[32];
      int lanes = 0;
      for (int lane = 0; lane < 32; ++lane) {
        const size_t t = node_of(w, lane, q);
        if (t >= n) break;
        const int o = partner(t, r);
        if (o < 0) continue;
        lane_node[lanes] = int(t);
        lane_loads[lanes] = 0;
        a[lanes] = find_root(self[t], lane_loads[lanes]);
        b[lanes] = find_root(o, lane_loads[lanes]);
        ++lanes;
      }
      long long slowest = 0;
      for (int l = 0; l < lanes; ++l) {
        int x = a[l], y = b[l];
        while (x != y) {
          if (x > y) std::swap(x, y);
          ++atomics;
          ++atomics_at[y];
          const int old = parent[y];
          parent[y] = std::min(old, x);
          if (old == y) break;
          x = find_root(x, lane_loads[l]);
          y = find_root(old, lane_loads[l]);
        }
        self[lane_node[l]] = x;
        loads += lane_loads[l];
        slowest = std::max(slowest, lane_loads[l]);
      }
      warp_loads += slowest;
      if (++step % 13 == 0 && shortcut) {
        for (int lane = 0; lane < 32; ++lane) {
          const size_t t = node_of(w, lane, q);
          if (t < n && node[t] && self[t] < parent[t]) {
            parent[t] = self[t];
            ++atomics;
            ++atomics_at[t];
          }
        }
      }
    }
    resident.erase(std::remove_if(resident.begin(), resident.end(), [&](const auto& x) { return x.second == int(steps); }),
                   resident.end());
  }

  long long depth = 0, warp_depth = 0, components = 0;
  std::vector<long long> every_block(blocks ? n : 0), root_plane(blocks ? n : 0);  // atomics per root
  for (size_t w = 0; w < total_warps; ++w) {
    long long slowest = 0;
    for (int lane = 0; lane < 32; ++lane) {
      long long lane_depth = 0;
      int lane_root = -1;    // the root of the lane's last block, as block_compress_kernel keeps it
      bool pending = false;  // an atomic for lane_root still to make
      for (int q = 0; q < per_lane; ++q) {
        const size_t t = node_of(w, lane, q);
        if (t >= n || !node[t]) continue;
        const int r = find_root(int(t), lane_depth);
        components += parent[t] == int(t);
        if (blocks) {
          ++every_block[r];
          if (r != lane_root) {
            if (pending) ++root_plane[lane_root];
            lane_root = r, pending = false;
          }
          pending |= t / (size_t(m1) * m2) == size_t(r) / (size_t(m1) * m2);
        }
      }
      if (pending) ++root_plane[lane_root];
      depth += lane_depth;
      slowest = std::max(slowest, lane_depth);
    }
    warp_depth += slowest;
  }
  std::printf("%s %s %d-conn, %s first, %zu warps, %d per lane, shortcut %d: walk %lld loads, warps wait %lld, %lld atomics, "
              "depth left %lld (warps wait %lld), %lld components\n",
              argv[1], argv[5], connectivity, order == kPlaneFirst ? "plane" : "left", warps, per_lane, int(shortcut), loads,
              warp_loads, atomics, depth, warp_depth, components);
  std::printf("merge: at most %lld atomics on one entry\n", *std::max_element(atomics_at.begin(), atomics_at.end()));
  if (blocks)
    std::printf("compress: at most %lld atomicMins on one root's first voxel from every block, %lld from its plane's\n",
                *std::max_element(every_block.begin(), every_block.end()),
                *std::max_element(root_plane.begin(), root_plane.end()));
}
