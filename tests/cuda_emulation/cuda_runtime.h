// A host stand-in for the CUDA runtime, for tests/test_cuda_emulation.py: petfast's CUDA sources
// compile as C++ against it (the test turns each kernel<<<grid, block, shmem, stream>>>(args) into
// emu::launch(kernel, grid, block, shmem, stream, args)), and "device" pointers are host memory.
// A launch runs its blocks one after another and each block's threads as fibers (ucontext): the
// scheduler resumes a random runnable thread, __syncthreads waits for the whole block, a warp
// shuffle or vote for the warp's live lanes, and every atomic first yields, so that unions and finds of
// different threads interleave as on a GPU (and is counted per address while emu::counting is on).
// The device has 2 multiprocessors, so that grids sized to the device loop over their work.
// Not modelled: a GPU's weak memory ordering (loads here are never stale), warp divergence rules
// beyond the shuffle barrier, launch limits, and speed.
#pragma once
#include <ucontext.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <unordered_map>
#include <vector>
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __constant__ static
#define __launch_bounds__(...)
#define __shared__ static
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct uint4 { unsigned x, y, z, w; };
struct alignas(8) int2 { int x, y; };
inline int2 make_int2(int x, int y) { return {x, y}; }
inline dim3 blockIdx, threadIdx, blockDim, gridDim;
typedef int cudaError_t;
typedef void* cudaStream_t;
enum { cudaSuccess = 0, cudaMemcpyDeviceToHost = 2, cudaMemcpyHostToDevice = 1 };
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16, cudaDevAttrMaxThreadsPerMultiProcessor = 39 };
inline const char* cudaGetErrorString(cudaError_t) { return "emulated"; }
inline cudaError_t cudaGetLastError() { return 0; }
inline cudaError_t cudaGetDevice(int* d) { *d = 0; return 0; }
inline cudaError_t cudaSetDevice(int) { return 0; }
// A small device, 2 multiprocessors of 2048 threads: grids sized to the device loop many times.
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int) {
  *v = a == cudaDevAttrMultiProcessorCount ? 2 : 2048;
  return 0;
}
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t = nullptr) { std::memset(p, v, n); return 0; }
inline cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, int, cudaStream_t = nullptr) { std::memcpy(d, s, n); return 0; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return 0; }
using std::max;
using std::min;

namespace emu {
enum State { kReady, kBlockBarrier, kWarpBarrier, kDone };
struct Fiber {
  ucontext_t ctx;
  std::vector<char> stack;
  State state = kReady;
  dim3 tid;
  int lane = 0, warp = 0;
};
inline ucontext_t scheduler;
inline std::vector<Fiber> fibers;
inline Fiber* current = nullptr;
inline std::function<void()> body;
inline std::mt19937_64 rng(7);
inline long long shfl_buf[32][32];  // per warp of a block (at most 1024 threads), per lane
inline int vote_buf[32][32];        // the same for votes: 0 (not posted), 2 (false) or 3 (true)

inline void yield(State s) {
  current->state = s;
  swapcontext(&current->ctx, &scheduler);
}
inline void trampoline() {
  body();
  current->state = kDone;
  swapcontext(&current->ctx, &scheduler);
}
inline void run_block(unsigned nthreads) {
  if (fibers.size() < nthreads) fibers.resize(nthreads);
  for (unsigned t = 0; t < nthreads; ++t) {
    Fiber& f = fibers[t];
    f.stack.resize(64 * 1024);  // petfast's kernels keep a few hundred bytes of locals
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack.data();
    f.ctx.uc_stack.ss_size = f.stack.size();
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, trampoline, 0);
    f.state = kReady;
    f.tid = dim3(t % blockDim.x, (t / blockDim.x) % blockDim.y, t / (blockDim.x * blockDim.y));
    f.lane = int(t % 32);
    f.warp = int(t / 32);
  }
  std::vector<unsigned> ready;
  while (true) {
    ready.clear();
    for (unsigned t = 0; t < nthreads; ++t)
      if (fibers[t].state == kReady) ready.push_back(t);
    if (!ready.empty()) {
      current = &fibers[ready[rng() % ready.size()]];
      threadIdx = current->tid;
      swapcontext(&scheduler, &current->ctx);
      continue;
    }
    bool released = false;
    for (unsigned w = 0; w * 32 < nthreads; ++w) {
      bool any = false, all = true;
      for (unsigned t = w * 32; t < std::min(nthreads, w * 32 + 32); ++t) {
        any |= fibers[t].state == kWarpBarrier;
        all &= fibers[t].state == kWarpBarrier || fibers[t].state == kDone;
      }
      if (any && all) {
        for (unsigned t = w * 32; t < std::min(nthreads, w * 32 + 32); ++t)
          if (fibers[t].state == kWarpBarrier) fibers[t].state = kReady;
        released = true;
      }
    }
    if (released) continue;
    bool any = false, all = true;
    for (unsigned t = 0; t < nthreads; ++t) {
      any |= fibers[t].state == kBlockBarrier;
      all &= fibers[t].state == kBlockBarrier || fibers[t].state == kDone;
    }
    if (any && all) {
      for (unsigned t = 0; t < nthreads; ++t)
        if (fibers[t].state == kBlockBarrier) fibers[t].state = kReady;
      continue;
    }
    if (any || !all) {
      std::fprintf(stderr, "emulated launch deadlocked (a barrier not every thread reaches)\n");
      std::abort();
    }
    break;  // every thread done
  }
  current = nullptr;
}
template <typename K, typename... A>
void launch(K kernel, dim3 grid, dim3 block, int, cudaStream_t, A... args) {
  gridDim = grid;
  blockDim = block;
  body = [&] { kernel(args...); };
  const unsigned n = block.x * block.y * block.z;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        blockIdx = dim3(bx, by, bz);
        run_block(n);
      }
}
template <typename K, typename... A>
void launch(K kernel, unsigned grid, unsigned block, int s, cudaStream_t st, A... args) {
  launch(kernel, dim3(grid), dim3(block), s, st, args...);
}
template <typename K, typename... A>
void launch(K kernel, dim3 grid, unsigned block, int s, cudaStream_t st, A... args) {
  launch(kernel, grid, dim3(block), s, st, args...);
}
template <typename K, typename... A>
void launch(K kernel, unsigned grid, dim3 block, int s, cudaStream_t st, A... args) {
  launch(kernel, dim3(grid), block, s, st, args...);
}
// With counting on, the number of atomics on each address (see most_atomics_on_one_address).
inline bool counting = false;
inline std::unordered_map<const void*, long long> atomics;
inline void preemption_point(const void* address) {
  if (counting) ++atomics[address];
  if (current) yield(kReady);
}
inline long long most_atomics_on_one_address() {
  long long m = 0;
  for (const auto& kv : atomics) m = std::max(m, kv.second);
  return m;
}
}  // namespace emu

inline void __syncthreads() { emu::yield(emu::kBlockBarrier); }
namespace emu {
// Lane `from`'s v (this lane's own outside the warp): each lane posts v, the warp meets, each reads,
// the warp meets again before anyone posts the next value.
template <typename T>
T shuffle(T v, int from) {
  const int lane = current->lane, warp = current->warp;
  long long bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  shfl_buf[warp][lane] = bits;
  yield(kWarpBarrier);
  T r = v;
  if (from >= 0 && from < 32) std::memcpy(&r, &shfl_buf[warp][from], sizeof(T));
  yield(kWarpBarrier);
  return r;
}
}  // namespace emu
namespace emu {
// The warp's vote: bit l set where lane l voted true. Lanes that have exited post nothing; each lane
// clears its post once every lane has read it.
inline unsigned ballot(bool pred) {
  const int lane = current->lane, warp = current->warp;
  vote_buf[warp][lane] = pred ? 3 : 2;
  yield(kWarpBarrier);
  unsigned m = 0;
  for (int l = 0; l < 32; ++l) m |= unsigned(vote_buf[warp][l] & 1) << l;
  yield(kWarpBarrier);
  vote_buf[warp][lane] = 0;
  return m;
}
}  // namespace emu
inline unsigned __ballot_sync(unsigned, bool pred) { return emu::ballot(pred); }
template <typename T>
T __shfl_sync(unsigned, T v, int from) { return emu::shuffle(v, from); }
template <typename T>
T __shfl_xor_sync(unsigned, T v, int x) { return emu::shuffle(v, emu::current->lane ^ x); }
template <typename T>
T __shfl_up_sync(unsigned, T v, int d) { return emu::shuffle(v, emu::current->lane - d); }
template <typename T>
T __shfl_down_sync(unsigned, T v, int d) { return emu::shuffle(v, emu::current->lane + d); }
template <typename T>
T __ldg(const T* p) { return *p; }
inline int atomicMin(int* p, int v) { emu::preemption_point(p); int o = *p; *p = std::min(o, v); return o; }
inline int atomicMax(int* p, int v) { emu::preemption_point(p); int o = *p; *p = std::max(o, v); return o; }
inline int atomicAdd(int* p, int v) { emu::preemption_point(p); int o = *p; *p += v; return o; }
inline unsigned atomicOr(unsigned* p, unsigned v) { emu::preemption_point(p); unsigned o = *p; *p |= v; return o; }
inline double atomicAdd(double* p, double v) { emu::preemption_point(p); double o = *p; *p += v; return o; }
inline unsigned long long atomicCAS(unsigned long long* p, unsigned long long c, unsigned long long v) {
  emu::preemption_point(p); unsigned long long o = *p; if (o == c) *p = v; return o;
}
inline long long __double_as_longlong(double d) { long long r; std::memcpy(&r, &d, 8); return r; }
inline double __longlong_as_double(long long l) { double r; std::memcpy(&r, &l, 8); return r; }
inline int __ffs(unsigned x) { return x ? __builtin_ctz(x) + 1 : 0; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
