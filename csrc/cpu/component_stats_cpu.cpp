// CPU twin of cuda/component_stats_cuda.cu: one pass over the labels accumulating, per label, the
// voxel count, coordinate sums, bounding box and (with an image) intensity sum and maximum.
#include <algorithm>
#include <vector>

#include "cpu/stats_rows.h"
#include "petfast/parallel.h"

namespace petfast {
namespace {

// The voxels of one label are summed in registers until the label changes (background skipped),
// then added to the label's rows, and the labelled voxels are visited as bits (below). On 50 % noise
// the per-voxel branch on background, mispredicted half the time, cost most of the 6 ns a voxel this
// took (155 -> 38 ms on a whole-body volume; the sums in registers alone gained about 10 %).
template <typename T>
void add_row(const int32_t* row, int64_t step, int64_t len, int64_t a, int64_t b, const T* img, int64_t img_step,
             int64_t count, double* acc, int32_t* box) {
  int32_t label = 0;
  int64_t voxels = 0, k_min = 0, k_max = 0;
  double sum_k = 0, sum = 0, max = -HUGE_VAL;
  auto flush = [&] {
    if (voxels == 0) return;
    double* s = acc + label * kStatsColumns;
    s[0] += double(voxels);
    s[1] += double(a) * double(voxels);
    s[2] += double(b) * double(voxels);
    s[3] += sum_k;
    if (img) {
      s[4] += sum;
      s[5] = std::max(s[5], max);
    }
    int32_t* x = box + label * 6;
    x[0] = std::min<int32_t>(x[0], int32_t(a));
    x[1] = std::max<int32_t>(x[1], int32_t(a));
    x[2] = std::min<int32_t>(x[2], int32_t(b));
    x[3] = std::max<int32_t>(x[3], int32_t(b));
    x[4] = std::min<int32_t>(x[4], int32_t(k_min));
    x[5] = std::max<int32_t>(x[5], int32_t(k_max));
  };
  auto visit = [&](int64_t k, int32_t l) {
    if (l <= 0 || l > count) {
      acc[1] += 1.0;  // a label outside 1..count: counted in row 0 (the caller raises)
      return;
    }
    if (l != label) {
      flush();
      label = l, voxels = 0, k_min = k, sum_k = 0, sum = 0, max = -HUGE_VAL;
    }
    ++voxels;
    k_max = k;
    sum_k += double(k);
    if (img) {
      const double v = double(img[k * img_step]);
      if (v != v) acc[0] += 1.0;  // NaN: counted in row 0 (the caller raises)
      sum += v;
      max = std::max(max, v);
    }
  };
  if (step == 1) {
    // Background is skipped 16 values at a time; from each labelled voxel on, the next 64 are read
    // as bits and visited with count-trailing-zeros: no branch per voxel on whether it is
    // background, which on noise is mispredicted half the time.
    for (int64_t c0 = first_nonzero(row, 0, len); c0 < len; c0 = first_nonzero(row, c0, len)) {
      const int64_t m = std::min<int64_t>(64, len - c0);
      uint64_t bits = 0;
      for (int64_t q = 0; q < m; ++q) bits |= uint64_t(row[c0 + q] != 0) << q;
      for (; bits; bits &= bits - 1) {
        const int64_t k = c0 + __builtin_ctzll(bits);
        visit(k, row[k]);
      }
      c0 += m;
    }
  } else {
    for (int64_t k = 0; k < len; ++k)
      if (row[k * step] != 0) visit(k, row[k * step]);
  }
  flush();
}

}  // namespace

Volume permuted(const Volume& v, const int* order) {
  Volume w = v;
  for (int a = 0; a < 3; ++a) w.shape[a] = v.shape[order[a]], w.strides[a] = v.strides[order[a]];
  return w;
}

void add_stats_row(const int32_t* row, int64_t step, int64_t len, int64_t a, int64_t b, const Volume* image,
                   int64_t count, double* acc, int32_t* box) {
  if (!image) return add_row<float>(row, step, len, a, b, nullptr, 0, count, acc, box);
  dispatch_dtype(image->dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* img = static_cast<const T*>(image->data) + a * image->strides[0] + b * image->strides[1];
    add_row<T>(row, step, len, a, b, img, image->strides[2], count, acc, box);
  });
}

StatsTables::StatsTables(int64_t count) : acc((count + 1) * kStatsColumns), box((count + 1) * 6) {
  for (int64_t l = 0; l <= count; ++l) init_stats_row(l, acc.data(), box.data());
}

void merge_stats(const std::vector<StatsTables>& parts, int64_t count, double* acc, int32_t* box) {
  // Rows in parallel: with a table per thread of tens of MB (noise's components), one thread
  // merging them all would undo the threads' gain.
  parallel_for(count + 1, 4096, [&](int64_t l0, int64_t l1) {
    for (int64_t l = l0; l < l1; ++l) init_stats_row(l, acc, box);
    for (const StatsTables& part : parts)
      for (int64_t l = l0; l < l1; ++l) {  // row 0 too: its NaN and out-of-range counts
        double* a = acc + l * kStatsColumns;
        const double* p = part.acc.data() + l * kStatsColumns;
        for (int c = 0; c < 5; ++c) a[c] += p[c];
        a[5] = std::max(a[5], p[5]);
        int32_t* b = box + l * 6;
        const int32_t* q = part.box.data() + l * 6;
        for (int c = 0; c < 6; c += 2) {
          b[c] = std::min(b[c], q[c]);
          b[c + 1] = std::max(b[c + 1], q[c + 1]);
        }
      }
  });
}

void stats_to_logical_axes(const int* order, int64_t count, double* acc, int32_t* box) {
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

void component_stats_cpu(const Volume& logical_labels, const Volume* logical_image, int64_t count, double* acc,
                         int32_t* box) {
  // Walk the labels in memory order (a Fortran-ordered volume, as NIfTI files give, was read 10x
  // slower in (i, j, k) order).
  int order[3];
  axes_by_stride(logical_labels.strides, order);
  const Volume labels = permuted(logical_labels, order);
  Volume image_view;
  if (logical_image) image_view = permuted(*logical_image, order);
  const Volume* image = logical_image ? &image_view : nullptr;
  const int32_t* lab = static_cast<const int32_t*>(labels.data);
  const int64_t n0 = labels.shape[0], n1 = labels.shape[1];
  auto run = [&](double* a, int32_t* b, int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t j = 0; j < n1; ++j)
        add_stats_row(lab + i * labels.strides[0] + j * labels.strides[1], labels.strides[2], labels.shape[2], i, j,
                      image, count, a, b);
  };
  // Private tables per thread, as many threads as 64 MB of them allow (noise's hundreds of
  // thousands of components: a few), and none when a table outweighs the labels.
  const int64_t per_thread_bytes = (count + 1) * (kStatsColumns * 8 + 24);
  const int64_t fit = std::max<int64_t>(1, (int64_t(64) << 20) / per_thread_bytes);
  int threads = int(std::min<int64_t>({int64_t(get_num_threads()), n0, fit}));
  if (per_thread_bytes > labels.size()) threads = 1;
  if (threads <= 1) {
    for (int64_t l = 0; l <= count; ++l) init_stats_row(l, acc, box);
    run(acc, box, 0, n0);
  } else {
    std::vector<StatsTables> parts(threads);
    parallel_for(threads, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        parts[t] = StatsTables(count);  // initialised by its own thread
        run(parts[t].acc.data(), parts[t].box.data(), n0 * t / threads, n0 * (t + 1) / threads);
      }
    });
    merge_stats(parts, count, acc, box);
  }
  stats_to_logical_axes(order, count, acc, box);
}

}  // namespace petfast
