// The CUDA labeller's neighbour tables (label_cuda.cu), in plain C++ so that the model of its
// merge, bench/gpu/union_find_model.cpp, runs on the same ones.
#pragma once

namespace petfast {

// Backward neighbours (di, dj, dk) in the CPU twin's order: 6-connectivity uses the first 3,
// 18 the first 9, 26 all 13. The block path uses the same 13 offsets between blocks.
constexpr int kNeighbours[13][3] = {{0, 0, -1},  {0, -1, 0},  {-1, 0, 0},  {0, -1, -1}, {0, -1, 1},
                                    {-1, -1, 0}, {-1, 1, 0},  {-1, 0, -1}, {-1, 0, 1},  {-1, -1, -1},
                                    {-1, -1, 1}, {-1, 1, -1}, {-1, 1, 1}};

// The bits of a block's voxels that face the neighbour at block offset (e0, e1, e2): along an axis
// with offset -1 the voxels at 0, with +1 those at 1, with 0 all.
constexpr unsigned facing(int e0, int e1, int e2) {
  unsigned m = 0;
  for (int q = 0; q < 8; ++q) {
    const int d[3] = {q >> 2, (q >> 1) & 1, q & 1}, e[3] = {e0, e1, e2};
    bool ok = true;
    for (int a = 0; a < 3; ++a) ok = ok && (e[a] == 0 || d[a] == (e[a] < 0 ? 0 : 1));
    if (ok) m |= 1u << q;
  }
  return m;
}

// The order in which a voxel or block makes its unions (indices into kNeighbours): the previous
// plane first, then the previous row, the left neighbour last, as BUF_3D does. The previous plane
// is mostly merged already, so the first union hangs the node one step below an existing tree.
// Left first, with a node per thread, the lanes of a warp (consecutive along k) each hung under
// their left neighbour in the same instant: chains 32 long (and longer across warps) that every
// later walk climbed. In a model of warps in lockstep (bench/gpu/union_find_model.cpp) plane first
// then cut the block merge's walk steps 3-8x and the depth left for the finishing walks 3-9x on
// 30 % blobs and 50 % noise; with 4 nodes per thread, as now, it still saves 1.2-1.8x.
constexpr int kUnionOrder[13] = {2, 5, 6, 7, 8, 9, 10, 11, 12, 1, 3, 4, 0};

}  // namespace petfast
