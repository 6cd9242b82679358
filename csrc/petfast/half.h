// float16 and bfloat16 storage types for the network ops. Values are converted to float32 to be
// computed on and rounded back to nearest even, on the host by bit manipulation and on the device
// by the hardware's conversions.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "petfast/array.h"

#ifdef __CUDACC__
#include <cuda_fp16.h>
#endif

namespace petfast {

struct Half {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};

PF_HOST_DEVICE inline uint32_t float_bits(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  uint32_t x;
  std::memcpy(&x, &f, 4);
  return x;
#endif
}
PF_HOST_DEVICE inline float bits_float(uint32_t x) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(x);
#else
  float f;
  std::memcpy(&f, &x, 4);
  return f;
#endif
}

PF_HOST_DEVICE inline float to_float(float v) { return v; }
PF_HOST_DEVICE inline float to_float(BFloat16 v) { return bits_float(uint32_t(v.bits) << 16); }
PF_HOST_DEVICE inline float to_float(Half v) {
#ifdef __CUDA_ARCH__
  return __half2float(__ushort_as_half(v.bits));
#else
  const uint32_t sign = uint32_t(v.bits & 0x8000u) << 16, exp = (v.bits >> 10) & 0x1fu, mant = v.bits & 0x3ffu;
  if (exp == 0x1f) return bits_float(sign | 0x7f800000u | (mant << 13));
  if (exp == 0) return bits_float(sign | float_bits(float(mant) * (1.0f / 16777216.0f)));  // zero, subnormal
  return bits_float(sign | ((exp + 112) << 23) | (mant << 13));
#endif
}

template <typename T>
PF_HOST_DEVICE inline T from_float(float f);
template <>
PF_HOST_DEVICE inline float from_float<float>(float f) {
  return f;
}
template <>
PF_HOST_DEVICE inline BFloat16 from_float<BFloat16>(float f) {
  const uint32_t x = float_bits(f);
  const uint32_t nearest = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16, nan = (x >> 16) | 0x40u;  // NaN stays NaN
  return BFloat16{uint16_t((x & 0x7fffffffu) > 0x7f800000u ? nan : nearest)};  // a select: vectorises
}
template <>
PF_HOST_DEVICE inline Half from_float<Half>(float f) {
#ifdef __CUDA_ARCH__
  return Half{__half_as_ushort(__float2half_rn(f))};
#else
  const uint32_t x = float_bits(f), sign = (x >> 16) & 0x8000u, a = x & 0x7fffffffu;
  if (a > 0x7f800000u) return Half{uint16_t(sign | 0x7e00u)};  // NaN
  if (a >= 0x477ff000u) return Half{uint16_t(sign | 0x7c00u)};  // rounds to infinity (65520 and up)
  if (a < 0x38800000u) {  // below 2^-14: a subnormal half (or zero), in units of 2^-24
    return Half{uint16_t(sign | uint32_t(std::nearbyint(bits_float(a) * 16777216.0f)))};
  }
  uint32_t h = ((a >> 23) - 112) << 10 | ((a & 0x7fffffu) >> 13);
  const uint32_t rest = a & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // a carry into the exponent is right
  return Half{uint16_t(sign | h)};
#endif
}

// Dispatch the network ops' dtypes (float32, float16, bfloat16) to a lambda taking a typed null pointer.
template <typename F>
inline void dispatch_float_dtype(DType t, F&& f) {
  switch (t) {
    case DType::Float32: f(static_cast<float*>(nullptr)); return;
    case DType::Float16: f(static_cast<Half*>(nullptr)); return;
    case DType::BFloat16: f(static_cast<BFloat16*>(nullptr)); return;
    default: break;
  }
  throw std::invalid_argument(std::string("expected float32, float16 or bfloat16, got ") + dtype_name(t));
}

}  // namespace petfast
