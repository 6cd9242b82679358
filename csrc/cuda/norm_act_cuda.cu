// CUDA twin of cpu/norm_act_cpu.cpp: instance norm + residual + LeakyReLU in two passes over the
// activations. Statistics: each CUDA block sums (x - plane's first value) and its square over a run
// of one plane in float32 and adds them into float64 per plane; a tiny kernel turns them into
// mean and scale; the apply pass normalises, adds the residual, activates and stores, in place if
// asked. Planar activations use 16-byte loads when their planes allow it.
#include <type_traits>

#include "cuda/common.cuh"
#include "petfast/half.h"
#include "petfast/ops.h"

namespace petfast {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kPlaneRun = 8192;  // positions of one plane per CUDA block (planar)
constexpr int64_t kRowRun = 1024;    // positions per CUDA block (channels-last; 32 channels each)

// Sixteen bytes of T, for vector loads and stores.
template <typename T>
union Pack {
  uint4 raw;
  T v[16 / sizeof(T)];
};

// Sums a and b over the block; the totals are valid in thread 0.
__device__ inline void block_sum(float& a, float& b) {
  for (int d = 16; d > 0; d >>= 1) {
    a += __shfl_down_sync(0xffffffffu, a, d);
    b += __shfl_down_sync(0xffffffffu, b, d);
  }
  __shared__ float sa[kThreads / 32], sb[kThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) {
    sa[warp] = a;
    sb[warp] = b;
  }
  __syncthreads();
  if (warp == 0) {
    a = lane < kThreads / 32 ? sa[lane] : 0.f;
    b = lane < kThreads / 32 ? sb[lane] : 0.f;
    for (int d = 4; d > 0; d >>= 1) {
      a += __shfl_down_sync(0xffffffffu, a, d);
      b += __shfl_down_sync(0xffffffffu, b, d);
    }
  }
}

__device__ inline void add_sq(float v, float o, float& a, float& b) {
  const float d = v - o;
  a += d;
  b += d * d;
}

// grid (runs of a plane, N * C planes).
template <typename T, bool kVector>
__global__ void planar_stats_kernel(const T* __restrict__ x, NdView v, double* stats) {
  const int64_t p = blockIdx.y, C = v.shape[1];
  const T* plane = x + (p / C) * v.strides[0] + (p % C) * v.strides[1];
  const int64_t s0 = int64_t(blockIdx.x) * kPlaneRun;
  const int n = int(min(v.shape[2] - s0, kPlaneRun));
  const float o = to_float(plane[0]);
  float a = 0.f, b = 0.f;
  if (kVector) {
    constexpr int V = 16 / sizeof(T);
    const uint4* run = reinterpret_cast<const uint4*>(plane + s0);
    for (int i = threadIdx.x; i < n / V; i += kThreads) {
      Pack<T> q;
      q.raw = __ldg(run + i);
#pragma unroll
      for (int l = 0; l < V; ++l) add_sq(to_float(q.v[l]), o, a, b);
    }
  } else {
    for (int i = threadIdx.x; i < n; i += kThreads) add_sq(to_float(plane[s0 + i]), o, a, b);
  }
  block_sum(a, b);
  if (threadIdx.x == 0) {
    atomicAdd(stats + 4 * p, double(a));
    atomicAdd(stats + 4 * p + 1, double(b));
  }
}

// block (32 channels, 8 row lanes), grid (runs of positions, N, channel groups of 32).
template <typename T>
__global__ void last_stats_kernel(const T* __restrict__ x, NdView v, double* stats) {
  const int64_t C = v.shape[1], S = v.shape[2], n = blockIdx.y, c = blockIdx.z * 32 + threadIdx.x;
  const int64_t s0 = int64_t(blockIdx.x) * kRowRun, s1 = min(S, s0 + kRowRun);
  float a = 0.f, b = 0.f;
  if (c < C) {
    const T* col = x + n * v.strides[0] + c;
    const float o = to_float(col[0]);
    for (int64_t s = s0 + threadIdx.y; s < s1; s += 8) add_sq(to_float(col[s * v.strides[2]]), o, a, b);
  }
  __shared__ float sa[8][33], sb[8][33];
  sa[threadIdx.y][threadIdx.x] = a;
  sb[threadIdx.y][threadIdx.x] = b;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    for (int k = 1; k < 8; ++k) {
      a += sa[k][threadIdx.x];
      b += sb[k][threadIdx.x];
    }
    atomicAdd(stats + 4 * (n * C + c), double(a));
    atomicAdd(stats + 4 * (n * C + c) + 1, double(b));
  }
}

// One thread per plane: the sums in stats[4p], stats[4p + 1] become the plane's origin (its first
// value, which the apply pass may overwrite in place), the mean about it, and gamma / sqrt(var + eps).
template <typename T>
__global__ void finish_stats_kernel(const T* __restrict__ x, NdView v, const float* __restrict__ gamma, double eps,
                                    double* stats) {
  const int64_t C = v.shape[1], S = v.shape[2], planes = v.shape[0] * C;
  const int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= planes) return;
  const double m = stats[4 * p] / double(S), var = fmax(0.0, stats[4 * p + 1] / double(S) - m * m);
  stats[4 * p] = to_float(x[(p / C) * v.strides[0] + (p % C) * v.strides[1]]);
  stats[4 * p + 1] = m;
  stats[4 * p + 2] = gamma[p % C] / sqrt(var + eps);
}

// Per plane: y = ((x - origin) - mean) * scale + beta. The first difference is exact for values
// near the origin, so a large mean loses nothing to float rounding.
struct PlaneNorm {
  float origin, mean, scale, bias;
  __device__ PlaneNorm(const double* stats, int64_t p, float b)
      : origin(float(stats[4 * p])), mean(float(stats[4 * p + 1])), scale(float(stats[4 * p + 2])), bias(b) {}
  __device__ float operator()(float v) const { return ((v - origin) - mean) * scale + bias; }
};

template <typename T>
__device__ inline T activate(float y, float slope) {
  return from_float<T>(y >= 0.f ? y : y * slope);
}

template <typename T>
__device__ inline float plus_residual(float y, const T* r, int64_t at) {
  return r ? y + to_float(r[at]) : y;
}

template <typename T, bool kVector>
__global__ void planar_apply_kernel(const T* x, NdView v, const T* r, const float* __restrict__ beta,
                                    const double* __restrict__ stats, float slope, T* out) {
  const int64_t p = blockIdx.y, C = v.shape[1];
  const int64_t base = (p / C) * v.strides[0] + (p % C) * v.strides[1] + int64_t(blockIdx.x) * kPlaneRun;
  const int n = int(min(v.shape[2] - int64_t(blockIdx.x) * kPlaneRun, kPlaneRun));
  const PlaneNorm norm(stats, p, beta[p % C]);
  if (kVector) {
    constexpr int V = 16 / sizeof(T);
    for (int i = threadIdx.x; i < n / V; i += kThreads) {
      Pack<T> q, rq, o;
      q.raw = reinterpret_cast<const uint4*>(x + base)[i];
      if (r) rq.raw = reinterpret_cast<const uint4*>(r + base)[i];
#pragma unroll
      for (int l = 0; l < V; ++l) {
        const float y = norm(to_float(q.v[l]));
        o.v[l] = activate<T>(r ? y + to_float(rq.v[l]) : y, slope);
      }
      reinterpret_cast<uint4*>(out + base)[i] = o.raw;
    }
  } else {
    for (int i = threadIdx.x; i < n; i += kThreads)
      out[base + i] = activate<T>(plus_residual(norm(to_float(x[base + i])), r, base + i), slope);
  }
}

template <typename T>
__global__ void last_apply_kernel(const T* x, NdView v, const T* r, const float* __restrict__ beta,
                                  const double* __restrict__ stats, float slope, T* out) {
  const int64_t C = v.shape[1], S = v.shape[2], n = blockIdx.y, c = blockIdx.z * 32 + threadIdx.x;
  if (c >= C) return;
  const int64_t s0 = int64_t(blockIdx.x) * kRowRun, s1 = min(S, s0 + kRowRun);
  const PlaneNorm norm(stats, n * C + c, beta[c]);
  for (int64_t s = s0 + threadIdx.y; s < s1; s += 8) {
    const int64_t at = n * v.strides[0] + s * v.strides[2] + c;
    out[at] = activate<T>(plus_residual(norm(to_float(x[at])), r, at), slope);
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

void instance_norm_act_cuda(const NdView& x, const NdView* residual, const NdView& gamma, const NdView& beta,
                            const NdView& out, double eps, double slope, const NdView& stats, uintptr_t s) {
  DeviceGuard guard(x.device);
  auto stream = reinterpret_cast<cudaStream_t>(s);
  const int64_t N = x.shape[0], C = x.shape[1], S = x.shape[2];
  require(N * C <= 65535 && N <= 65535, "instance_norm_act: at most 65535 (sample, channel) planes per call");
  require((S + kPlaneRun - 1) / kPlaneRun < (int64_t(1) << 31), "instance_norm_act: too many positions per plane");
  double* st = static_cast<double*>(stats.data);
  cuda_check(cudaMemsetAsync(st, 0, sizeof(double) * 4 * N * C, stream), "instance_norm_act memset");
  const bool planar = x.strides[2] == 1;
  dispatch_float_dtype(x.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* xp = static_cast<const T*>(x.data);
    const T* rp = residual ? static_cast<const T*>(residual->data) : nullptr;
    T* op = static_cast<T*>(out.data);
    const float* g = static_cast<const float*>(gamma.data);
    const float* b = static_cast<const float*>(beta.data);
    if (planar) {
      constexpr int64_t V = 16 / sizeof(T);
      const bool vector = S % V == 0 && x.strides[0] % V == 0 && x.strides[1] % V == 0 && aligned16(xp) &&
                          aligned16(op) && (!rp || aligned16(rp));
      const dim3 grid(unsigned((S + kPlaneRun - 1) / kPlaneRun), unsigned(N * C));
      if (vector) planar_stats_kernel<T, true><<<grid, kThreads, 0, stream>>>(xp, x, st);
      else planar_stats_kernel<T, false><<<grid, kThreads, 0, stream>>>(xp, x, st);
      finish_stats_kernel<T><<<unsigned((N * C + 255) / 256), 256, 0, stream>>>(xp, x, g, eps, st);
      if (vector) planar_apply_kernel<T, true><<<grid, kThreads, 0, stream>>>(xp, x, rp, b, st, float(slope), op);
      else planar_apply_kernel<T, false><<<grid, kThreads, 0, stream>>>(xp, x, rp, b, st, float(slope), op);
    } else {
      const dim3 grid(unsigned((S + kRowRun - 1) / kRowRun), unsigned(N), unsigned((C + 31) / 32)), block(32, 8);
      last_stats_kernel<T><<<grid, block, 0, stream>>>(xp, x, st);
      finish_stats_kernel<T><<<unsigned((N * C + 255) / 256), 256, 0, stream>>>(xp, x, g, eps, st);
      last_apply_kernel<T><<<grid, block, 0, stream>>>(xp, x, rp, b, st, float(slope), op);
    }
  });
  cuda_check(cudaGetLastError(), "instance_norm_act launch");
}

}  // namespace petfast
