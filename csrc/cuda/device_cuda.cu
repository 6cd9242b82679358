#include "cuda/common.cuh"
#include "petfast/ops.h"

namespace petfast {

// Number of usable CUDA devices; 0 when there is no driver or no device (never an error).
int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" state
    return 0;
  }
  return n;
}

}  // namespace petfast
