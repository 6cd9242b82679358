// One CPU threading policy for every op: a process-wide thread count (set_num_threads), so that
// petfast and torch can be kept from oversubscribing the machine. Plain std::thread, no OpenMP,
// because torch wheels bundle their own libgomp.
#pragma once
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>
#include <type_traits>
#include <vector>

#include <unistd.h>

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

namespace detail {

// Worker threads shared by every parallel_for, idle on a condition variable between calls. Starting
// threads for each call cost about 30 us a thread: labelling a 64^3 mask took 84 us on one thread,
// 200 us on two and 690 us on eight. A job is a function that runs chunks until none is left; the
// caller runs it too and waits only for the chunks that were claimed, so a worker that picks the
// job up late, or never, costs nothing (see parallel_for).
class WorkerPool {
 public:
  using Job = std::shared_ptr<std::function<void()>>;

  // Queues `job` for `helpers` workers, starting workers until there are that many.
  void offer(const Job& job, int helpers) {
    {
      std::lock_guard<std::mutex> lock(m_);
      for (int h = 0; h < helpers; ++h) queue_.push_back(job);
      try {
        for (; workers_ < helpers; ++workers_) std::thread([this] { serve(); }).detach();
      } catch (const std::system_error&) {
        // No more threads to be had: the workers there are and the caller share the chunks.
      }
    }
    for (int h = 0; h < helpers; ++h) cv_.notify_one();
  }
  // The caller is done with `job`: the workers that have not taken it yet never will.
  void withdraw(const Job& job) {
    std::lock_guard<std::mutex> lock(m_);
    for (auto it = queue_.begin(); it != queue_.end();) it = *it == job ? queue_.erase(it) : it + 1;
  }

 private:
  void serve() {
    while (true) {
      Job job;
      {
        std::unique_lock<std::mutex> lock(m_);
        cv_.wait(lock, [this] { return !queue_.empty(); });
        job = std::move(queue_.front());
        queue_.pop_front();
      }
      (*job)();
    }
  }
  std::mutex m_;
  std::condition_variable cv_;
  std::deque<Job> queue_;
  int workers_ = 0;
};

// The process's pool. Never destroyed (its workers outlive static destructors). A child made by
// fork() (a torch DataLoader worker, say) has the parent's pool but none of its threads, and its
// lock may have been held at the fork: the child gets a pool of its own. Two threads racing here
// may each make one; both work, one is leaked.
inline WorkerPool& worker_pool() {
  static std::atomic<WorkerPool*> pool{nullptr};
  static std::atomic<long> owner{0};
  const long pid = long(getpid());
  if (owner.load(std::memory_order_acquire) != pid) {
    pool.store(new WorkerPool(), std::memory_order_release);
    owner.store(pid, std::memory_order_release);
  }
  return *pool.load(std::memory_order_acquire);
}

}  // namespace detail

// Calls fn(begin, end) over [0, n) in chunks of at least `grain` items, on up to get_num_threads()
// threads (the caller's thread included). Exceptions from workers are rethrown in the caller.
//
// The caller returns as soon as every chunk is done, not when every worker has run: a worker of the
// pool that the OS wakes late (torch's OpenMP threads spin for milliseconds after each of its
// operators unless OMP_WAIT_POLICY=PASSIVE) finds no chunk left and goes back to sleep without
// touching the caller's state. Waiting for every worker made each call wait for such a worker's
// time slice: the fused instance norm took 3.6 ms after a convolution instead of 1.4 ms.
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
  auto job = std::make_shared<std::function<void()>>([st, body, work] { work(*st, body); });
  detail::WorkerPool& pool = detail::worker_pool();
  pool.offer(job, int(threads - 1));
  work(*st, body);
  {
    std::unique_lock<std::mutex> lock(st->m);
    st->cv.wait(lock, [&] { return st->done == st->chunks; });
  }
  pool.withdraw(job);
  if (st->error) std::rethrow_exception(st->error);
}

}  // namespace petfast
