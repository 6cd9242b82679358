// A mask of any kernel dtype as 0/1 bytes, and whether it holds values other than 0 and 1 (NaN
// included), in one multithreaded pass in memory order. The metrics checked a float32 mask with
// (x == 0) | (x == 1) and then converted it: four passes and three temporaries, 60 ms on a
// whole-body mask, three times the metrics themselves. CPU only: on CUDA torch does it.
#include <algorithm>
#include <atomic>

#include "petfast/ops.h"
#include "petfast/parallel.h"

namespace petfast {
namespace {

// dst[c * ds] = row[c * ss] != 0 for c < n; returns whether a value was neither 0 nor 1 (kUnit:
// both steps are 1, known to the compiler). Only == and != compare (they do not trap on NaN), and
// the flag is a byte, not a count (widening int16 compares to a 64-bit sum made int16 masks slower
// than float32 ones), so the loop vectorises.
template <typename T, bool kUnit>
PF_VECTOR_CLONES bool binary_row(const T* __restrict row, int64_t ss, int64_t n, uint8_t* __restrict dst, int64_t ds) {
  uint8_t other = 0;
  for (int64_t c = 0; c < n; ++c) {
    const T v = row[kUnit ? c : c * ss];
    dst[kUnit ? c : c * ds] = uint8_t(v != T(0));
    other |= uint8_t(v != T(0)) & uint8_t(v != T(1));
  }
  return other != 0;
}

}  // namespace

bool binary_mask_cpu(const Volume& src, const Volume& dst) {
  int ax[3];  // walk axes, outer first
  axes_by_stride(src.strides, ax);
  const int64_t n_mid = src.shape[ax[1]], n_inner = src.shape[ax[2]];
  const int64_t ss = src.strides[ax[2]], ds = dst.strides[ax[2]];
  std::atomic<bool> other{false};
  dispatch_dtype(src.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* in = static_cast<const T*>(src.data);
    uint8_t* out = static_cast<uint8_t*>(dst.data);
    const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(n_inner, 1));
    parallel_for(src.shape[ax[0]] * n_mid, grain, [&](int64_t r0, int64_t r1) {
      bool mine = false;
      for (int64_t r = r0; r < r1; ++r) {
        const T* row = in + row_offset(src.shape, src.strides, ax, r);
        uint8_t* orow = out + row_offset(dst.shape, dst.strides, ax, r);
        mine |= ss == 1 && ds == 1 ? binary_row<T, true>(row, ss, n_inner, orow, ds)
                                   : binary_row<T, false>(row, ss, n_inner, orow, ds);
      }
      if (mine) other = true;
    });
  });
  return other.load();
}

}  // namespace petfast
