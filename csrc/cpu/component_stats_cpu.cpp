// CPU twin of cuda/component_stats_cuda.cu: one pass over the labels accumulating, per label, the
// voxel count, coordinate sums, bounding box and (with an image) intensity sum and maximum.
#include <algorithm>
#include <cstdlib>
#include <limits>
#include <vector>

#include "petfast/ops.h"
#include "petfast/parallel.h"

namespace petfast {
namespace {

template <typename T>
void accumulate(const Volume& labels, const Volume* image, int64_t count, double* acc, int32_t* box, int64_t a0,
                int64_t a1) {
  const int32_t* lab = static_cast<const int32_t*>(labels.data);
  const T* img = image ? static_cast<const T*>(image->data) : nullptr;
  const bool contiguous_rows = labels.strides[2] == 1;
  for (int64_t i = a0; i < a1; ++i)
    for (int64_t j = 0; j < labels.shape[1]; ++j)
      for (int64_t k = 0; k < labels.shape[2]; ++k) {
        const int32_t* row = lab + i * labels.strides[0] + j * labels.strides[1];
        if (contiguous_rows && (k = first_nonzero(row, k, labels.shape[2])) >= labels.shape[2]) break;
        const int32_t l = row[k * labels.strides[2]];
        if (l <= 0 || l > count) {
          if (l != 0) acc[1] += 1.0;  // a label outside 1..count: counted in row 0 (the caller raises)
          continue;
        }
        double* a = acc + l * kStatsColumns;
        a[0] += 1.0;
        a[1] += double(i);
        a[2] += double(j);
        a[3] += double(k);
        if (img) {
          const double v = double(img[i * image->strides[0] + j * image->strides[1] + k * image->strides[2]]);
          if (v != v) acc[0] += 1.0;  // NaN: counted in row 0 (the caller raises)
          a[4] += v;
          a[5] = std::max(a[5], v);
        }
        int32_t* b = box + l * 6;
        b[0] = std::min<int32_t>(b[0], int32_t(i));
        b[1] = std::max<int32_t>(b[1], int32_t(i));
        b[2] = std::min<int32_t>(b[2], int32_t(j));
        b[3] = std::max<int32_t>(b[3], int32_t(j));
        b[4] = std::min<int32_t>(b[4], int32_t(k));
        b[5] = std::max<int32_t>(b[5], int32_t(k));
      }
}

// The views with their axes in the labels' memory order (largest stride first), so that the walk
// reads memory in order (a Fortran-ordered volume, as NIfTI files give, was read 10x slower).
void to_memory_order(Volume& labels, Volume* image, int* order) {
  axes_by_stride(labels.strides, order);
  for (Volume* v : {&labels, image}) {
    if (!v) continue;
    const Volume w = *v;
    for (int a = 0; a < 3; ++a) v->shape[a] = w.shape[order[a]], v->strides[a] = w.strides[order[a]];
  }
}

// Rows of acc and box from walk axes back to (i, j, k): walk axis a is axis order[a].
void to_logical_axes(const int* order, int64_t count, double* acc, int32_t* box) {
  for (int64_t l = 1; l <= count; ++l) {
    double* a = acc + l * kStatsColumns;
    int32_t* b = box + l * 6;
    double sums[3];
    int32_t lims[6];
    for (int w = 0; w < 3; ++w) {
      sums[order[w]] = a[1 + w];
      lims[2 * order[w]] = b[2 * w];
      lims[2 * order[w] + 1] = b[2 * w + 1];
    }
    std::copy(sums, sums + 3, a + 1);
    std::copy(lims, lims + 6, b);
  }
}

}  // namespace

void component_stats_cpu(const Volume& logical_labels, const Volume* logical_image, int64_t count, double* acc,
                         int32_t* box) {
  for (int64_t l = 0; l <= count; ++l) init_stats_row(l, acc, box);
  Volume labels = logical_labels, image_view;
  if (logical_image) image_view = *logical_image;
  Volume* image = logical_image ? &image_view : nullptr;
  int order[3];
  to_memory_order(labels, image, order);
  const int64_t n0 = labels.shape[0];
  // Private accumulators per thread when they are small next to the volume; else one thread.
  const int64_t per_thread_bytes = (count + 1) * (kStatsColumns * 8 + 24);
  int threads = int(std::min<int64_t>(get_num_threads(), n0));
  if (per_thread_bytes * threads > 64 * (int64_t(1) << 20) || per_thread_bytes > labels.size()) threads = 1;
  auto run = [&](double* a, int32_t* b, int64_t i0, int64_t i1) {
    if (!image) {
      accumulate<float>(labels, nullptr, count, a, b, i0, i1);
    } else {
      dispatch_dtype(image->dtype, [&](auto* tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        accumulate<T>(labels, image, count, a, b, i0, i1);
      });
    }
  };
  if (threads <= 1) {
    run(acc, box, 0, n0);
  } else {
    std::vector<std::vector<double>> accs(threads, std::vector<double>(acc, acc + (count + 1) * kStatsColumns));
    std::vector<std::vector<int32_t>> boxes(threads, std::vector<int32_t>(box, box + (count + 1) * 6));
    parallel_for(threads, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) run(accs[t].data(), boxes[t].data(), n0 * t / threads, n0 * (t + 1) / threads);
    });
    for (int t = 0; t < threads; ++t)
      for (int64_t l = 0; l <= count; ++l) {  // row 0 too: its NaN count
        double* a = acc + l * kStatsColumns;
        const double* p = accs[t].data() + l * kStatsColumns;
        for (int c = 0; c < 5; ++c) a[c] = t == 0 ? p[c] : a[c] + p[c];
        a[5] = t == 0 ? p[5] : std::max(a[5], p[5]);
        int32_t* b = box + l * 6;
        const int32_t* q = boxes[t].data() + l * 6;
        for (int c = 0; c < 6; c += 2) {
          b[c] = t == 0 ? q[c] : std::min(b[c], q[c]);
          b[c + 1] = t == 0 ? q[c + 1] : std::max(b[c + 1], q[c + 1]);
        }
      }
  }
  to_logical_axes(order, count, acc, box);
}

}  // namespace petfast
