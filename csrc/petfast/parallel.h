// One CPU threading policy for every op: a process-wide thread count (set_num_threads), so that
// petfast and torch can be kept from oversubscribing the machine. Plain std::thread, no OpenMP,
// because torch wheels bundle their own libgomp.
#pragma once
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>
#include <type_traits>
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
//
// The caller returns as soon as every chunk is done, not when every worker has exited: workers are
// detached, and one that the OS starts late (torch's OpenMP threads spin for milliseconds after each
// of its operators unless OMP_WAIT_POLICY=PASSIVE) finds no chunk left and exits without touching
// the caller's state. Joining them made each call wait for such a worker's time slice: the fused
// instance norm took 3.6 ms after a convolution instead of 1.4 ms.
template <typename F>
void parallel_for(int64_t n, int64_t grain, F&& fn) {
  if (n <= 0) return;
  int64_t threads = std::min<int64_t>(get_num_threads(), (n + grain - 1) / std::max<int64_t>(grain, 1));
  if (threads <= 1) {
    fn(int64_t(0), n);
    return;
  }
  // Several chunks per thread so that uneven rows (e.g. rows that fall outside the FOV) balance.
  struct State {
    int64_t n = 0, chunks = 0;
    std::atomic<int64_t> next{0};
    std::atomic<bool> failed{false};
    std::exception_ptr error;
    std::mutex m;
    std::condition_variable cv;
    int64_t done = 0;  // chunks finished, under m
  };
  auto st = std::make_shared<State>();
  st->n = n;
  st->chunks = std::min<int64_t>(n, threads * 8);
  // Runs chunks until none is left; `body` is dereferenced only for a chunk this thread claimed,
  // and the caller cannot return before that chunk is counted as done.
  auto work = [](State& s, std::remove_reference_t<F>* body) {
    int64_t finished = 0;
    for (int64_t c; (c = s.next.fetch_add(1)) < s.chunks; ++finished) {
      if (s.failed.load(std::memory_order_relaxed)) continue;
      try {
        (*body)(s.n * c / s.chunks, s.n * (c + 1) / s.chunks);
      } catch (...) {
        std::lock_guard<std::mutex> lock(s.m);
        if (!s.failed.exchange(true)) s.error = std::current_exception();
      }
    }
    if (finished) {
      std::lock_guard<std::mutex> lock(s.m);
      s.done += finished;
      if (s.done == s.chunks) s.cv.notify_all();
    }
  };
  std::remove_reference_t<F>* body = &fn;
  try {
    for (int64_t t = 1; t < threads; ++t) std::thread([st, body, work] { work(*st, body); }).detach();
  } catch (const std::system_error&) {
    // No more threads to be had: the ones started and this one share the chunks.
  }
  work(*st, body);
  std::unique_lock<std::mutex> lock(st->m);
  st->cv.wait(lock, [&] { return st->done == st->chunks; });
  if (st->error) std::rethrow_exception(st->error);
}

}  // namespace petfast
