// CPU twin of cuda/norm_act_cuda.cu: instance normalisation + residual + LeakyReLU in two passes
// over the activations (statistics, then normalise-and-activate), where torch's modules take four
// or five. Work items are (sample, run of spatial positions) with all channels, so that both
// layouts read memory in order and batches of one still spread over the threads.
#include <algorithm>
#include <type_traits>
#include <vector>

#include "petfast/half.h"
#include "petfast/ops.h"
#include "petfast/parallel.h"

namespace petfast {
namespace {

// Both layouts are walked as contiguous runs of values whose channel repeats with a period: one
// channel (planar) or C channels (channels-last). Per-channel coefficients are laid out as a
// pattern of P values (P >= 64, a multiple of the period) that the inner loops walk in step with
// the data, so that every loop is long and contiguous and vectorises, even for 8 channels.
constexpr int64_t kMinPattern = 64;
constexpr int64_t kFlushChunks = 64;  // float partial sums move into float64 every 64 values per lane

int64_t pattern_length(int64_t period) { return period * ((kMinPattern + period - 1) / period); }

// y >= 0 ? y : slope * y without a branch (NaN, infinities and -0 come out the same), so that
// the loops below vectorise.
inline float leaky(float y, float slope) { return std::max(y, 0.f) + slope * std::min(y, 0.f); }

// da[j] += (v - o[j]) and db[j] += (v - o[j])^2 over a run of n values, position j of the pattern
// (the last pattern may be partial). The two hot loops have AVX2 and AVX-512 clones (parallel.h):
// about 2x for float32, more for bfloat16.
template <typename T>
PF_VECTOR_CLONES void sum_run(const T* __restrict v, int64_t n, const float* __restrict o, int64_t P,
                              double* __restrict da, double* __restrict db) {
  std::vector<float> fa(P), fb(P);
  for (int64_t i = 0; i < n;) {
    std::fill(fa.begin(), fa.end(), 0.f);
    std::fill(fb.begin(), fb.end(), 0.f);
    float* __restrict a = fa.data();
    float* __restrict b = fb.data();
    for (const int64_t stop = std::min(n, i + P * kFlushChunks); i < stop; i += P) {
      const int64_t len = std::min(P, stop - i);
      for (int64_t j = 0; j < len; ++j) {
        const float d = to_float(v[i + j]) - o[j];
        a[j] += d;
        b[j] += d * d;
      }
    }
    for (int64_t j = 0; j < P; ++j) {
      da[j] += a[j];
      db[j] += b[j];
    }
  }
}

// Per-channel coefficients laid out as patterns (see above).
struct Coefficients {
  std::vector<float> origin, mean, scale, beta;
  explicit Coefficients(int64_t P) : origin(P), mean(P), scale(P), beta(P) {}
};

// out[i] = act(((x[i] - origin) - mean) * scale + beta [+ r[i]]) over a run of n values.
// Subtracting the plane's origin first is exact for values near it, so a large mean loses nothing
// to float rounding. out may be x: each value is read before it is written, which ivdep tells the
// vectoriser.
template <typename T, bool kResidual>
PF_VECTOR_CLONES void apply_run(const T* x, const T* r, T* out, int64_t n, const Coefficients& k, int64_t P,
                                float slope) {
  const float *o = k.origin.data(), *m = k.mean.data(), *sc = k.scale.data(), *b = k.beta.data();
  for (int64_t i = 0; i < n; i += P) {
    const int64_t len = std::min(P, n - i);
#pragma GCC ivdep
    for (int64_t j = 0; j < len; ++j) {
      float y = ((to_float(x[i + j]) - o[j]) - m[j]) * sc[j] + b[j];
      if (kResidual) y += to_float(r[i + j]);
      out[i + j] = from_float<T>(leaky(y, slope));
    }
  }
}

template <typename T>
void norm_act_typed(const NdView& xv, const NdView* rv, const float* gamma, const float* beta, const NdView& ov,
                    double eps, float slope) {
  const T* x = static_cast<const T*>(xv.data);
  const T* r = rv ? static_cast<const T*>(rv->data) : nullptr;
  T* out = static_cast<T*>(ov.data);
  const int64_t N = xv.shape[0], C = xv.shape[1], S = xv.shape[2];
  const int64_t sN = xv.strides[0], sC = xv.strides[1];
  const bool planar = xv.strides[2] == 1;
  const int64_t P = pattern_length(planar ? 1 : C);
  const int64_t runs = std::clamp<int64_t>(S / 4096, 1, 64);  // runs of spatial positions per sample
  // Work item i: sample i / runs, positions [s0, s1) of it, every channel: one run per channel
  // (planar) or one run of all channels (channels-last).
  auto span = [&](int64_t i, int64_t& n, int64_t& s0, int64_t& s1) {
    n = i / runs;
    s0 = S * (i % runs) / runs;
    s1 = S * (i % runs + 1) / runs;
  };
  const int64_t runs_per_item = planar ? C : 1;
  auto run_start = [&](int64_t n, int64_t c, int64_t s0) { return planar ? n * sN + c * sC + s0 : n * sN + s0 * C; };
  auto run_length = [&](int64_t s0, int64_t s1) { return planar ? s1 - s0 : (s1 - s0) * C; };
  auto channel = [&](int64_t c, int64_t j) { return planar ? c : j % C; };  // of run c's pattern position j

  std::vector<float> origin(N * C);  // each plane's first value: the shift the sums are taken about
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) origin[n * C + c] = to_float(x[n * sN + c * sC]);

  std::vector<double> part(N * runs * C * 2, 0.0);  // per work item and channel: sum, sum of squares
  parallel_for(N * runs, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> o(P);
    std::vector<double> da(P), db(P);
    for (int64_t i = i0; i < i1; ++i) {
      int64_t n, s0, s1;
      span(i, n, s0, s1);
      double* p = &part[i * C * 2];
      for (int64_t c = 0; c < runs_per_item; ++c) {
        for (int64_t j = 0; j < P; ++j) o[j] = origin[n * C + channel(c, j)];
        std::fill(da.begin(), da.end(), 0.0);
        std::fill(db.begin(), db.end(), 0.0);
        sum_run(x + run_start(n, c, s0), run_length(s0, s1), o.data(), P, da.data(), db.data());
        for (int64_t j = 0; j < P; ++j) {
          p[2 * channel(c, j)] += da[j];
          p[2 * channel(c, j) + 1] += db[j];
        }
      }
    }
  });

  // Per plane: the mean about the origin and gamma / sqrt(var + eps).
  std::vector<float> mean(N * C), scale(N * C);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      double a = 0, b = 0;
      for (int64_t k = 0; k < runs; ++k) {
        a += part[((n * runs + k) * C + c) * 2];
        b += part[((n * runs + k) * C + c) * 2 + 1];
      }
      const double m = a / double(S), var = std::max(0.0, b / double(S) - m * m);
      mean[n * C + c] = float(m);
      scale[n * C + c] = float(gamma[c] / std::sqrt(var + eps));
    }

  parallel_for(N * runs, 1, [&](int64_t i0, int64_t i1) {
    Coefficients k(P);
    for (int64_t i = i0; i < i1; ++i) {
      int64_t n, s0, s1;
      span(i, n, s0, s1);
      for (int64_t c = 0; c < runs_per_item; ++c) {
        for (int64_t j = 0; j < P; ++j) {
          const int64_t ch = channel(c, j);
          k.origin[j] = origin[n * C + ch];
          k.mean[j] = mean[n * C + ch];
          k.scale[j] = scale[n * C + ch];
          k.beta[j] = beta[ch];
        }
        const int64_t at = run_start(n, c, s0), len = run_length(s0, s1);
        if (r) apply_run<T, true>(x + at, r + at, out + at, len, k, P, slope);
        else apply_run<T, false>(x + at, nullptr, out + at, len, k, P, slope);
      }
    }
  });
}

}  // namespace

void instance_norm_act_cpu(const NdView& x, const NdView* residual, const NdView& gamma, const NdView& beta,
                           const NdView& out, double eps, double slope) {
  dispatch_float_dtype(x.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    norm_act_typed<T>(x, residual, static_cast<const float*>(gamma.data), static_cast<const float*>(beta.data), out,
                      eps, float(slope));
  });
}

}  // namespace petfast
