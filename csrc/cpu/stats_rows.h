// Component statistics gathered row by row: shared by component_stats_cpu and label_cpu, which
// gathers them while it writes the final labels (one pass over the labels fewer). Tables as
// component_stats_cpu's (ops.h); volumes are viewed in walk order (axis 0 outermost), and the
// results are turned back to (i, j, k) at the end.
#pragma once
#include <vector>

#include "petfast/ops.h"

namespace petfast {

// v with its axes permuted: axis a of the result is axis order[a] of v.
Volume permuted(const Volume& v, const int* order);

// Adds row (a, b) of the labels, `len` values `step` apart (the labels of walk-order coordinates
// (a, b, 0..len-1)), and the image values there, to the rows of acc and box. image: walk-order view
// or null. Labels outside 0..count are counted in row 0.
void add_stats_row(const int32_t* row, int64_t step, int64_t len, int64_t a, int64_t b, const Volume* image,
                   int64_t count, double* acc, int32_t* box);

// One thread's tables, rows 0..count initialised.
struct StatsTables {
  std::vector<double> acc;
  std::vector<int32_t> box;
  StatsTables() = default;
  explicit StatsTables(int64_t count);
};

// acc and box = the sums, minima and maxima of the threads' tables.
void merge_stats(const std::vector<StatsTables>& parts, int64_t count, double* acc, int32_t* box);

// Rows of acc and box from walk axes back to (i, j, k): walk axis a is axis order[a].
void stats_to_logical_axes(const int* order, int64_t count, double* acc, int32_t* box);

}  // namespace petfast
