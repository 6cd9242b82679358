// A strided 3-D view of memory the Python layer owns. Kernels never allocate user-visible memory:
// Python hands them pointers, shapes, element strides (which may be negative) and a device.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>

#ifdef __CUDACC__
#define PF_HOST_DEVICE __host__ __device__
#else
#define PF_HOST_DEVICE
#endif

namespace petfast {

// Float16 and BFloat16 are read only by the network ops (instance_norm_act); the volume ops take
// codes 0-4.
enum class DType : int { UInt8 = 0, Int16 = 1, Int32 = 2, Float32 = 3, Float64 = 4, Float16 = 5, BFloat16 = 6 };

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::UInt8: return "uint8";
    case DType::Int16: return "int16";
    case DType::Int32: return "int32";
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16";
  }
  return "unknown";
}

inline int64_t element_size(DType t) {
  switch (t) {
    case DType::UInt8: return 1;
    case DType::Int16: case DType::Float16: case DType::BFloat16: return 2;
    case DType::Int32: case DType::Float32: return 4;
    case DType::Float64: return 8;
  }
  return 0;
}

struct Volume {
  void* data = nullptr;
  DType dtype = DType::Float32;
  int64_t shape[3] = {0, 0, 0};
  int64_t strides[3] = {0, 0, 0};  // in elements
  int device = -1;                 // -1: host memory, >= 0: CUDA device ordinal

  PF_HOST_DEVICE int64_t size() const { return shape[0] * shape[1] * shape[2]; }
  bool on_cuda() const { return device >= 0; }
  bool c_contiguous() const {
    return strides[2] == 1 && strides[1] == shape[2] && strides[0] == shape[1] * shape[2];
  }
};

// A strided N-D view (N <= 5) for ops over stacks of volumes: channels (C, D, H, W) and batches of
// tiles (B, C, d, h, w). Same conventions as Volume.
struct NdView {
  void* data = nullptr;
  DType dtype = DType::Float32;
  int ndim = 0;
  int64_t shape[5] = {1, 1, 1, 1, 1};
  int64_t strides[5] = {0, 0, 0, 0, 0};  // in elements
  int device = -1;

  PF_HOST_DEVICE int64_t size() const {
    int64_t n = 1;
    for (int a = 0; a < ndim; ++a) n *= shape[a];
    return n;
  }
  bool on_cuda() const { return device >= 0; }
};

// Tile origins (voxel index of each tile's first voxel along D, H, W), passed by value to kernels.
constexpr int kMaxTiles = 128;
struct TileOrigins {
  int count = 0;
  int64_t at[kMaxTiles][3];
};

// Row-major 3x4 matrix mapping a destination index (i, j, k) to a continuous source index.
struct IndexMap {
  double m[3][4];
};

// Dispatch on a runtime dtype to a template lambda taking a typed null pointer.
template <typename F>
inline void dispatch_dtype(DType t, F&& f) {
  switch (t) {
    case DType::UInt8: f(static_cast<uint8_t*>(nullptr)); return;
    case DType::Int16: f(static_cast<int16_t*>(nullptr)); return;
    case DType::Int32: f(static_cast<int32_t*>(nullptr)); return;
    case DType::Float32: f(static_cast<float*>(nullptr)); return;
    case DType::Float64: f(static_cast<double*>(nullptr)); return;
    default: break;  // float16 and bfloat16: only the network ops (dispatch_float_dtype)
  }
  throw std::invalid_argument("unsupported dtype code " + std::to_string(static_cast<int>(t)));
}

// First index >= c of a nonzero value in a contiguous row of n values (n if none), testing 16
// values at a time so that long runs of background cost little.
template <typename T>
inline int64_t first_nonzero(const T* row, int64_t c, int64_t n) {
  for (; c + 16 <= n; c += 16) {
    bool any = false;
    for (int k = 0; k < 16; ++k) any |= row[c + k] != T(0);
    if (any) break;
  }
  while (c < n && row[c] == T(0)) ++c;
  return c;
}

// The 3 axes of a view from the largest |stride| to the smallest: how a walk in memory order nests
// its loops (outermost first). Ties keep their (i, j, k) order.
inline void axes_by_stride(const int64_t* strides, int* ax) {
  ax[0] = 0, ax[1] = 1, ax[2] = 2;
  std::stable_sort(ax, ax + 3, [&](int p, int q) { return std::llabs(strides[p]) > std::llabs(strides[q]); });
}

// Element offset of row r (0 .. shape[ax[0]] x shape[ax[1]] - 1) of a volume walked in the axis
// order ax (outer first, as axes_by_stride gives): where its run along axis ax[2] starts.
inline int64_t row_offset(const int64_t* shape, const int64_t* strides, const int* ax, int64_t r) {
  return (r / shape[ax[1]]) * strides[ax[0]] + (r % shape[ax[1]]) * strides[ax[1]];
}

inline void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument(what);
}

}  // namespace petfast
