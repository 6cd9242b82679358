// One CPU threading policy for every op: a process-wide thread count (set_num_threads), so that
// petfast and torch can be kept from oversubscribing the machine. Plain std::thread, no OpenMP,
// because torch wheels bundle their own libgomp.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <thread>
#include <vector>

// Hot loops that vectorise are compiled for AVX2 and AVX-512 as well and picked at load time by the
// CPU (the wheel's baseline is SSE2). GCC on x86-64 with glibc only (the clones dispatch through
// ifunc, which musl lacks); elsewhere the baseline build.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__GLIBC__)
#define PF_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define PF_VECTOR_CLONES
#endif

namespace petfast {

int get_num_threads();
void set_num_threads(int n);

// Calls fn(begin, end) over [0, n) in chunks of at least `grain` items, on up to get_num_threads()
// threads (the caller's thread included). Exceptions from workers are rethrown in the caller.
template <typename F>
void parallel_for(int64_t n, int64_t grain, F&& fn) {
  if (n <= 0) return;
  int64_t threads = std::min<int64_t>(get_num_threads(), (n + grain - 1) / std::max<int64_t>(grain, 1));
  if (threads <= 1) {
    fn(int64_t(0), n);
    return;
  }
  // Several chunks per thread so that uneven rows (e.g. rows that fall outside the FOV) balance.
  const int64_t chunks = std::min<int64_t>(n, threads * 8);
  std::atomic<int64_t> next{0};
  std::exception_ptr error;
  std::atomic<bool> failed{false};
  auto worker = [&]() {
    try {
      for (int64_t c; !failed.load(std::memory_order_relaxed) && (c = next.fetch_add(1)) < chunks;) {
        fn(n * c / chunks, n * (c + 1) / chunks);
      }
    } catch (...) {
      if (!failed.exchange(true)) error = std::current_exception();
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  for (int64_t t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace petfast
