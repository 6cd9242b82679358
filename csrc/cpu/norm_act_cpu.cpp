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

// float partial sums move into float64 every kFlush values (planar) or kFlushRows rows (channels
// last), so that long planes lose no precision and the inner loops stay float (vectorised).
constexpr int64_t kFlush = 1024, kFlushRows = 64;

// y >= 0 ? y : slope * y without a branch (NaN, infinities and -0 come out the same), so that
// the loops below vectorise.
inline float leaky(float y, float slope) { return std::max(y, 0.f) + slope * std::min(y, 0.f); }

// out[i] = act(((x[i] - origin) - mean) * scale + beta [+ r[i]]) over a contiguous run of n values:
// one channel (kPerChannel false: origin, mean, scale, beta are scalars) or one position's channels
// (true: arrays). Subtracting the plane's origin first is exact for values near it, so a large mean
// loses nothing to float rounding. out may be x: each value is read before it is written, which
// ivdep tells the vectoriser.
template <typename T, bool kPerChannel>
void apply_run(const T* x, const T* r, T* out, int64_t n, const float* origin, const float* mean, const float* scale,
               const float* beta, float slope) {
  auto at = [](const float* v, int64_t i) { return kPerChannel ? v[i] : v[0]; };
  auto value = [&](int64_t i) { return ((to_float(x[i]) - at(origin, i)) - at(mean, i)) * at(scale, i) + at(beta, i); };
  if (r) {
#pragma GCC ivdep
    for (int64_t i = 0; i < n; ++i) out[i] = from_float<T>(leaky(value(i) + to_float(r[i]), slope));
  } else {
#pragma GCC ivdep
    for (int64_t i = 0; i < n; ++i) out[i] = from_float<T>(leaky(value(i), slope));
  }
}

template <typename T>
void norm_act_typed(const NdView& xv, const NdView* rv, const float* gamma, const float* beta, const NdView& ov,
                    double eps, float slope) {
  const T* x = static_cast<const T*>(xv.data);
  const T* r = rv ? static_cast<const T*>(rv->data) : nullptr;
  T* out = static_cast<T*>(ov.data);
  const int64_t N = xv.shape[0], C = xv.shape[1], S = xv.shape[2];
  const int64_t sN = xv.strides[0], sC = xv.strides[1], sS = xv.strides[2];
  const bool planar = sS == 1;
  const int64_t runs = std::clamp<int64_t>(S / 4096, 1, 64);  // runs of spatial positions per sample

  std::vector<float> origin(N * C);  // each plane's first value: the shift the sums are taken about
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) origin[n * C + c] = to_float(x[n * sN + c * sC]);

  std::vector<double> part(N * runs * C * 2, 0.0);
  parallel_for(N * runs, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> fa(C), fb(C);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t n = i / runs, k = i % runs, s0 = S * k / runs, s1 = S * (k + 1) / runs;
      double* p = &part[i * C * 2];
      const float* o = &origin[n * C];
      if (planar) {
        for (int64_t c = 0; c < C; ++c) {
          const T* v = x + n * sN + c * sC;
          for (int64_t f0 = s0; f0 < s1; f0 += kFlush) {
            const int64_t f1 = std::min(s1, f0 + kFlush);
            float la[8] = {}, lb[8] = {};  // independent lanes: the compiler vectorises them
            int64_t s = f0;
            for (; s + 8 <= f1; s += 8)
              for (int l = 0; l < 8; ++l) {
                const float d = to_float(v[s + l]) - o[c];
                la[l] += d;
                lb[l] += d * d;
              }
            for (; s < f1; ++s) {
              const float d = to_float(v[s]) - o[c];
              la[0] += d;
              lb[0] += d * d;
            }
            for (int l = 0; l < 8; ++l) {
              p[2 * c] += la[l];
              p[2 * c + 1] += lb[l];
            }
          }
        }
      } else {
        for (int64_t f0 = s0; f0 < s1; f0 += kFlushRows) {
          std::fill(fa.begin(), fa.end(), 0.f);
          std::fill(fb.begin(), fb.end(), 0.f);
          for (int64_t s = f0; s < std::min(s1, f0 + kFlushRows); ++s) {
            const T* row = x + n * sN + s * sS;
            for (int64_t c = 0; c < C; ++c) {
              const float d = to_float(row[c]) - o[c];
              fa[c] += d;
              fb[c] += d * d;
            }
          }
          for (int64_t c = 0; c < C; ++c) {
            p[2 * c] += fa[c];
            p[2 * c + 1] += fb[c];
          }
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
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t n = i / runs, k = i % runs, s0 = S * k / runs, s1 = S * (k + 1) / runs;
      if (planar) {
        for (int64_t c = 0; c < C; ++c) {
          const int64_t at = n * sN + c * sC + s0;
          apply_run<T, false>(x + at, r ? r + at : nullptr, out + at, s1 - s0, &origin[n * C + c], &mean[n * C + c],
                              &scale[n * C + c], beta + c, slope);
        }
      } else {
        for (int64_t s = s0; s < s1; ++s) {
          const int64_t at = n * sN + s * sS;
          apply_run<T, true>(x + at, r ? r + at : nullptr, out + at, C, &origin[n * C], &mean[n * C], &scale[n * C], beta,
                             slope);
        }
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
