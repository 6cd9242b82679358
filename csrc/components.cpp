// Argument checks and CPU/CUDA dispatch for connected components: label, component_stats and the
// last pass of small-component removal.
#include <algorithm>
#include <climits>
#include <cstdlib>
#include <string>

#include "petfast/ops.h"

namespace petfast {

namespace {

void check_stats_tables(const Volume& labels, const Volume* image, int64_t rows, const Volume& acc, const Volume& box,
                        const char* op) {
  require(acc.dtype == DType::Float64 && acc.c_contiguous() && acc.shape[0] == rows && acc.shape[1] == kStatsColumns,
          "internal: statistics rows");
  require(box.dtype == DType::Int32 && box.c_contiguous() && box.shape[0] == rows && box.shape[1] == 6,
          "internal: bounding-box rows");
  if (image) {
    for (int a = 0; a < 3; ++a)
      require(image->shape[a] == labels.shape[a], std::string(op) + ": image and labels differ in shape");
    require(image->device == labels.device, std::string(op) + ": image and labels live on different devices");
  }
  require(acc.device == labels.device && box.device == labels.device, "internal: statistics on another device");
}

}  // namespace

int64_t label(const Volume& src, const Volume& dst, int connectivity, const Volume& scratch, const Volume* image,
              const Volume* acc, const Volume* box, uintptr_t stream) {
  for (int a = 0; a < 3; ++a) {
    require(src.shape[a] > 0, "label: every axis must have at least one voxel");
    require(dst.shape[a] == src.shape[a], "label: labels must have the mask's shape");
  }
  require(src.device == dst.device, "label: mask and labels live on different devices");
  require(dst.dtype == DType::Int32, "label: labels are int32");
  require(connectivity == 6 || connectivity == 18 || connectivity == 26, "connectivity must be 6, 18 or 26");
  require(src.size() < INT32_MAX, "label: volumes of 2^31 voxels or more are not supported");
  // The CPU walks in the mask's memory order and the labels must be laid out in that same order;
  // the GPU walks in (i, j, k) raster order with C-contiguous labels.
  int order[3] = {0, 1, 2};
  if (!src.on_cuda()) axes_by_stride(src.strides, order);
  require(dst.strides[order[2]] == 1 && dst.strides[order[1]] == dst.shape[order[2]] &&
              dst.strides[order[0]] == dst.shape[order[1]] * dst.shape[order[2]],
          "internal: labels must be contiguous in the mask's memory order");
  LabelStats stats;
  if (acc) {
    require(acc->shape[0] >= 1 && acc->shape[0] < INT32_MAX, "internal: statistics rows");
    check_stats_tables(src, image, acc->shape[0], *acc, *box, "label");
    stats = LabelStats{image, static_cast<double*>(acc->data), static_cast<int32_t*>(box->data), acc->shape[0] - 1};
  } else {
    require(image == nullptr, "internal: an image without statistics tables");
  }
  if (src.on_cuda()) {
#ifdef PETFAST_WITH_CUDA
    require(scratch.device == src.device, "internal: label scratch on another device");
    return label_cuda(src, dst, connectivity, scratch, acc ? &stats : nullptr, stream);
#else
    no_cuda();
#endif
  }
  return label_cpu(src, dst, connectivity, order, acc ? &stats : nullptr);
}

void component_stats(const Volume& labels, const Volume* image, int64_t count, const Volume& acc, const Volume& box,
                     uintptr_t stream) {
  require(labels.dtype == DType::Int32, "component_stats: labels must be int32 (as petfast.label returns)");
  require(count >= 0 && count < INT32_MAX, "component_stats: bad label count");
  check_stats_tables(labels, image, count + 1, acc, box, "component_stats");
  if (labels.on_cuda()) {
#ifdef PETFAST_WITH_CUDA
    component_stats_cuda(labels, image, count, static_cast<double*>(acc.data), static_cast<int32_t*>(box.data), stream);
    return;
#else
    no_cuda();
#endif
  }
  component_stats_cpu(labels, image, count, static_cast<double*>(acc.data), static_cast<int32_t*>(box.data));
}

void drop_components(const Volume& labels, const Volume& keep, const Volume& out) {
  require(labels.dtype == DType::Int32, "drop_components: labels must be int32 (as petfast.label returns)");
  for (int a = 0; a < 3; ++a) require(out.shape[a] == labels.shape[a], "drop_components: mask and labels differ in shape");
  require(keep.dtype == DType::UInt8 && keep.c_contiguous() && keep.shape[0] >= 1, "internal: keep table");
  require(!labels.on_cuda() && !out.on_cuda() && !keep.on_cuda(), "internal: drop_components runs on the CPU");
  drop_components_cpu(labels, static_cast<const uint8_t*>(keep.data), keep.shape[0] - 1, out);
}

}  // namespace petfast
