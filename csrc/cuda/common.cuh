// Shared helpers of the CUDA launchers: error checks that raise (never abort) and a device guard.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

namespace petfast {

inline void cuda_check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(err));
  }
}

// Makes `device` current for the launches in scope. petfast links its own (static) CUDA runtime,
// whose current device is separate from torch's, so every launcher sets it explicitly.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    cuda_check(cudaGetDevice(&prev_), "cudaGetDevice");
    if (prev_ != device) cuda_check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() {
    int cur = -1;
    if (cudaGetDevice(&cur) == cudaSuccess && cur != prev_) cudaSetDevice(prev_);
  }

 private:
  int prev_ = 0;
};

inline unsigned int grid_dim(int64_t blocks, int64_t limit) {
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(blocks, limit)));
}

// CUDA blocks of `threads` threads that fill the current device's multiprocessors once: the grid
// of a kernel whose blocks loop over the work and add what they carried at the end (the
// statistics' runs), so that it adds once per resident block rather than once per piece of work.
inline int64_t resident_blocks(int threads) {
  int device = 0, sms = 0, per_sm = 0;
  cuda_check(cudaGetDevice(&device), "cudaGetDevice");
  cuda_check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "multiprocessor count");
  cuda_check(cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxThreadsPerMultiProcessor, device), "threads per multiprocessor");
  return int64_t(sms) * std::max(1, per_sm / threads);
}

}  // namespace petfast
