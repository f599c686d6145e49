// The CUDA emulation runtime (see emu.h for what it emulates and how faithfully).
//
// A launch runs its blocks one after another in a shuffled order. A block's threads are fibers
// (x86-64: a hand-written switch of the callee-saved registers, about 20 ns) scheduled round-robin
// on the launching thread, or OS threads from a pool (ThreadSanitizer builds, GPTOSS_EMU_THREADS=1,
// other architectures). Everything a block's threads share (the barrier, the warps' pending
// collectives, the failure flag) is one Block object under one mutex; a thread waits with
// wait_until(), which yields to the next fiber or sleeps on a condition variable (the block's for
// the barrier, its warp's for a warp collective).
// A full round in which no fiber makes progress, or a wait of 30 s with OS threads, is a deadlock
// and fails the launch with every thread's whereabouts.
#include "cuda/emu/emu.h"

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define GPTOSS_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define GPTOSS_EMU_ASAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define GPTOSS_EMU_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define GPTOSS_EMU_TSAN 1
#endif
#endif
#if defined(__x86_64__) && !defined(GPTOSS_EMU_TSAN)
#define GPTOSS_EMU_HAVE_FIBERS 1
#endif

#if defined(GPTOSS_EMU_ASAN)
extern "C" void __sanitizer_start_switch_fiber(void** fake_stack_save, const void* bottom,
                                               size_t size);
extern "C" void __sanitizer_finish_switch_fiber(void* fake_stack_save, const void** bottom_old,
                                                size_t* size_old);
extern "C" void __asan_unpoison_memory_region(void const volatile* addr, size_t size);
#endif

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

#if defined(GPTOSS_EMU_HAVE_FIBERS)
// gptoss_emu_switch(save, to): saves the callee-saved registers, MXCSR and the x87 control word
// on the current stack, stores the stack pointer in *save, and resumes the stack `to`.
asm(R"(
  .text
  .p2align 4
  .globl gptoss_emu_switch
  .hidden gptoss_emu_switch
  .type gptoss_emu_switch,@function
gptoss_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size gptoss_emu_switch,.-gptoss_emu_switch
)");
extern "C" void gptoss_emu_switch(void** save, void* to);
#endif

namespace gptoss_emu {
namespace {

// A failure inside a kernel (the launch fails with this message).
struct Fault : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// Thrown into the other threads of a block that failed, to unwind them.
struct Abort {};

constexpr size_t kMaxGather = 64;
constexpr size_t kDefaultSmemLimit = 48 * 1024;
constexpr size_t kMaxSmem = 227 * 1024;

struct Block;

struct PendingCopy {
  void* dst;
  const void* src;
  int bytes, src_bytes, group;
};

struct Thread {
  Block* block = nullptr;
  uint3 tid{0, 0, 0};
  int linear = 0;
  bool done = false;
  // where the thread waits, for deadlock reports
  const char* where_what = "running";
  const char* where_file = "";
  int where_line = 0;
  std::vector<PendingCopy> copies;
  int group = 0;  // the open cp.async group
  // fiber state
  void* sp = nullptr;
  char* stack = nullptr;
  size_t stack_size = 0;
  void* fake_stack = nullptr;
};

struct Collective {
  unsigned mask = 0, arrived = 0;
  const char* what = nullptr;
  size_t bytes = 0;
  bool complete = false;
  int readers = 0;
  unsigned char data[32][kMaxGather];
};

struct Warp {
  unsigned live = 0;
  std::deque<Collective> pending;
  // OS threads: the lanes waiting at one of this warp's collectives sleep here, so completing it
  // wakes 32 threads rather than the whole block (a tensor-core step is one such collective)
  std::unique_ptr<std::condition_variable> cv{new std::condition_variable};
};

struct Block {
  const char* kernel = "";
  uint3 idx{0, 0, 0};
  int nthreads = 0, live = 0;
  std::vector<Thread> threads;
  std::vector<Warp> warps;
  std::mutex mu;
  std::condition_variable cv;
  uint64_t progress = 0;
  // the block barrier
  int arrived = 0;
  uint64_t gen = 0;
  const char* bar_file = nullptr;
  int bar_line = 0;
  int accum = 0, result = 0;
  // failure
  bool failed = false;
  std::string error;
  const std::function<void()>* body = nullptr;
  unsigned char* smem = nullptr;
  size_t smem_bytes = 0;
  bool fibers = true;

  void fail_locked(const std::string& msg) {
    if (!failed) {
      failed = true;
      error = msg;
    }
    ++progress;
    cv.notify_all();
    for (auto& w : warps) w.cv->notify_all();
  }
};

thread_local Thread* tl_thread = nullptr;

std::string thread_name(const Thread& t) {
  std::ostringstream s;
  s << "block (" << t.block->idx.x << "," << t.block->idx.y << "," << t.block->idx.z
    << ") thread (" << t.tid.x << "," << t.tid.y << "," << t.tid.z << ")";
  return s.str();
}

Thread& self() {
  if (!tl_thread) {
    std::fprintf(stderr, "gptoss emulation: a device function was called outside a kernel\n");
    std::abort();
  }
  return *tl_thread;
}

std::string where(const Thread& t) {
  std::string s = t.where_what;
  if (t.where_file && *t.where_file) s += std::string(" ") + t.where_file + ":" + std::to_string(t.where_line);
  return s;
}

[[noreturn]] void fault(const std::string& msg) { throw Fault(thread_name(self()) + ": " + msg); }

void run_thread_body(Thread& t);

// ------------------------------------------------------------------------------ fibers
#if defined(GPTOSS_EMU_HAVE_FIBERS)
struct FiberHost {
  void* sched_sp = nullptr;
  const void* sched_bottom = nullptr;
  size_t sched_size = 0;
  void* sched_fake = nullptr;
  std::vector<std::pair<char*, size_t>> stacks;  // reused across blocks
};
thread_local FiberHost tl_host;

size_t fiber_stack_bytes() {
#if defined(GPTOSS_EMU_ASAN)
  return size_t(1) << 20;
#else
  return size_t(256) << 10;
#endif
}

void to_scheduler(Thread& t, bool final) {
#if defined(GPTOSS_EMU_ASAN)
  __sanitizer_start_switch_fiber(final ? nullptr : &t.fake_stack, tl_host.sched_bottom,
                                 tl_host.sched_size);
#else
  (void)final;
#endif
  gptoss_emu_switch(&t.sp, tl_host.sched_sp);
#if defined(GPTOSS_EMU_ASAN)
  __sanitizer_finish_switch_fiber(t.fake_stack, &tl_host.sched_bottom, &tl_host.sched_size);
#endif
}

void fiber_main() {
  Thread& t = *tl_thread;
#if defined(GPTOSS_EMU_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &tl_host.sched_bottom, &tl_host.sched_size);
#endif
  run_thread_body(t);
  to_scheduler(t, true);
  std::abort();  // a finished fiber is never resumed
}

void resume(Thread& t) {
  tl_thread = &t;
  threadIdx = t.tid;
#if defined(GPTOSS_EMU_ASAN)
  __sanitizer_start_switch_fiber(&tl_host.sched_fake, t.stack, t.stack_size);
#endif
  gptoss_emu_switch(&tl_host.sched_sp, t.sp);
#if defined(GPTOSS_EMU_ASAN)
  __sanitizer_finish_switch_fiber(tl_host.sched_fake, nullptr, nullptr);
#endif
  tl_thread = nullptr;
}

void init_fiber(Thread& t, int i) {
  auto& stacks = tl_host.stacks;
  const size_t bytes = fiber_stack_bytes();
  while (stacks.size() <= size_t(i)) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("gptoss emulation: cannot map a fiber stack");
    mprotect(p, 4096, PROT_NONE);  // guard page: a stack overflow faults instead of corrupting
    stacks.emplace_back(static_cast<char*>(p), bytes);
  }
  t.stack = stacks[size_t(i)].first + 4096;
  t.stack_size = bytes - 4096;
#if defined(GPTOSS_EMU_ASAN)
  __asan_unpoison_memory_region(t.stack, t.stack_size);  // an abandoned fiber's stale redzones
#endif
  uintptr_t top = (reinterpret_cast<uintptr_t>(t.stack) + t.stack_size) & ~uintptr_t(15);
  uint64_t* sp = reinterpret_cast<uint64_t*>(top - 72);
  uint32_t mxcsr = 0x1f80;
  uint16_t fcw = 0x037f;
  std::memcpy(reinterpret_cast<char*>(sp), &mxcsr, 4);
  std::memcpy(reinterpret_cast<char*>(sp) + 4, &fcw, 2);
  for (int r = 1; r <= 6; ++r) sp[r] = 0;
  sp[7] = reinterpret_cast<uint64_t>(&fiber_main);
  sp[8] = 0;
  t.sp = sp;
}
#endif

// ------------------------------------------------------------------------------ OS threads
struct Pool {
  // one wake-up slot per worker: a block of n threads wakes exactly n workers
  struct Slot {
    std::condition_variable cv;
    uint64_t job = 0;
  };
  std::mutex mu;
  std::condition_variable done_cv;
  std::vector<std::thread> workers;
  std::vector<std::unique_ptr<Slot>> slots;
  Block* block = nullptr;
  int remaining = 0;
  bool stop = false;

  ~Pool() {
    {
      std::lock_guard<std::mutex> g(mu);
      stop = true;
      for (auto& sl : slots) sl->cv.notify_one();
    }
    for (auto& w : workers) w.join();
  }
  void run(Block& b);
  void worker(int i);
};

void Pool::worker(int i) {
  uint64_t seen = 0;
  for (;;) {
    Block* b;
    {
      std::unique_lock<std::mutex> g(mu);
      Slot& sl = *slots[size_t(i)];
      sl.cv.wait(g, [&] { return stop || sl.job != seen; });
      if (stop) return;
      seen = sl.job;
      b = block;
    }
    Thread& t = b->threads[size_t(i)];
    tl_thread = &t;
    threadIdx = t.tid;
    run_thread_body(t);
    tl_thread = nullptr;
    {
      std::lock_guard<std::mutex> g(mu);
      if (--remaining == 0) done_cv.notify_all();
    }
  }
}

void Pool::run(Block& b) {
  std::unique_lock<std::mutex> g(mu);
  while (int(workers.size()) < b.nthreads) {
    const int i = int(workers.size());
    slots.emplace_back(new Slot);
    workers.emplace_back([this, i] { worker(i); });
  }
  block = &b;
  remaining = b.nthreads;
  for (int i = 0; i < b.nthreads; ++i) {
    ++slots[size_t(i)]->job;
    slots[size_t(i)]->cv.notify_one();
  }
  done_cv.wait(g, [&] { return remaining == 0; });
}

Pool& pool() {
  static Pool p;
  return p;
}

// ------------------------------------------------------------------------------ waiting
template <class Pred>
void wait_until(std::unique_lock<std::mutex>& lk, Thread& t, Pred pred,
                std::condition_variable* on = nullptr) {
  Block& b = *t.block;
  std::condition_variable& cv = on ? *on : b.cv;
  if (b.fibers) {
#if defined(GPTOSS_EMU_HAVE_FIBERS)
    while (!pred()) {
      if (b.failed) throw Abort{};
      lk.unlock();
      to_scheduler(t, false);
      lk.lock();
    }
    if (b.failed) throw Abort{};
#endif
    return;
  }
  while (!pred()) {
    if (b.failed) throw Abort{};
    const uint64_t before = b.progress;
    if (cv.wait_for(lk, std::chrono::seconds(30)) == std::cv_status::timeout &&
        b.progress == before && !pred() && !b.failed) {
      std::ostringstream s;
      s << "deadlock: no thread of the block made progress for 30 s;";
      for (auto& o : b.threads)
        if (!o.done) s << " [" << o.tid.x << "," << o.tid.y << "," << o.tid.z << "] " << where(o);
      b.fail_locked(thread_name(t) + ": " + s.str());
    }
  }
  if (b.failed) throw Abort{};
}

void thread_exit(Thread& t) {
  Block& b = *t.block;
  std::unique_lock<std::mutex> lk(b.mu);
  t.done = true;
  t.where_what = "exited";
  --b.live;
  const int lane = t.linear % 32;
  Warp& w = b.warps[size_t(t.linear / 32)];
  w.live &= ~(1u << lane);
  for (auto& c : w.pending)
    if (!c.complete && (c.mask >> lane & 1u))
      b.fail_locked(thread_name(t) + ": exited while named in the mask of a pending " +
                    std::string(c.what));
  if (b.arrived > 0 && b.arrived == b.live) {
    b.arrived = 0;
    b.result = b.accum;
    b.accum = 0;
    ++b.gen;
  }
  ++b.progress;
  b.cv.notify_all();
}

void run_thread_body(Thread& t) {
  Block& b = *t.block;
  blockIdx = b.idx;
  try {
    (*b.body)();
    // cp.async copies never waited for land when the thread ends
    for (auto& c : t.copies) {
      if (c.src_bytes > 0) std::memcpy(c.dst, c.src, size_t(c.src_bytes));
      std::memset(static_cast<char*>(c.dst) + c.src_bytes, 0, size_t(c.bytes - c.src_bytes));
    }
    t.copies.clear();
    thread_exit(t);
  } catch (const Fault& f) {
    std::lock_guard<std::mutex> g(b.mu);
    t.done = true;
    b.fail_locked(f.what());
  } catch (const Abort&) {
    std::lock_guard<std::mutex> g(b.mu);
    t.done = true;
  } catch (const std::exception& e) {
    std::lock_guard<std::mutex> g(b.mu);
    t.done = true;
    b.fail_locked(thread_name(t) + ": " + e.what());
  }
}

bool env_threads() {
  const char* e = std::getenv("GPTOSS_EMU_THREADS");
  return e && *e && std::strcmp(e, "0") != 0;
}

// Runs one block to completion; returns the failure message or "".
std::string run_block(Block& b) {
#if defined(GPTOSS_EMU_HAVE_FIBERS)
  static const bool use_threads = env_threads();
  b.fibers = !use_threads;
#else
  b.fibers = false;
#endif
  if (!b.fibers) {
    pool().run(b);
    return b.failed ? b.error : std::string();
  }
#if defined(GPTOSS_EMU_HAVE_FIBERS)
  for (int i = 0; i < b.nthreads; ++i) init_fiber(b.threads[size_t(i)], i);
  for (;;) {
    const uint64_t before = b.progress;
    bool alive = false;
    for (auto& t : b.threads) {
      if (t.done) continue;
      alive = true;
      resume(t);
      if (b.failed) return b.error;
    }
    if (!alive) return std::string();
    if (b.progress == before) {
      std::ostringstream s;
      s << "kernel " << b.kernel << " block (" << b.idx.x << "," << b.idx.y << "," << b.idx.z
        << "): deadlock, no thread can proceed:";
      int shown = 0;
      for (auto& t : b.threads)
        if (!t.done && shown++ < 8)
          s << " [" << t.tid.x << "," << t.tid.y << "," << t.tid.z << "] " << where(t) << ";";
      return s.str();
    }
  }
#endif
  return std::string();
}

// ------------------------------------------------------------------------------ errors, memory
std::mutex g_mu;
cudaError_t g_last = cudaSuccess;
std::string g_msg;
std::map<const void*, size_t> g_allocs;
std::map<const void*, size_t> g_smem_limit;  // kernel -> max dynamic smem (cudaFuncSetAttribute)
uint64_t g_launches = 0;

cudaError_t set_error(cudaError_t e, const std::string& msg) {
  std::lock_guard<std::mutex> g(g_mu);
  if (g_last == cudaSuccess) {
    g_last = e;
    g_msg = msg;
  }
  return e;
}

}  // namespace
}  // namespace gptoss_emu

// ------------------------------------------------------------------------------ streams, graphs
struct CUgraph_st {
  std::vector<std::function<void()>> ops;
};
struct CUgraphExec_st {
  std::vector<std::function<void()>> ops;
};
struct CUstream_st {
  CUgraph_st* capture = nullptr;
  bool invalidated = false;
};
struct CUevent_st {
  std::chrono::steady_clock::time_point t;
};

namespace gptoss_emu {
namespace {
std::atomic<int> g_capturing{0};

// An operation on stream s: run now, or append to the graph being captured.
cudaError_t enqueue(cudaStream_t s, std::function<void()> op) {
  if (s && s->capture) {
    s->capture->ops.push_back(std::move(op));
    return cudaSuccess;
  }
  op();
  return cudaSuccess;
}

// A synchronous call: not allowed while a stream is being captured (as with the GPU's global
// capture mode); it invalidates the capture.
cudaError_t sync_call(const char* what) {
  if (g_capturing.load() > 0)
    return set_error(cudaErrorStreamCaptureUnsupported,
                     std::string(what) + " called while a stream is being captured");
  return cudaSuccess;
}

void run_grid(const char* name, const void* kernel, dim3 grid, dim3 block, size_t smem,
              const std::function<void()>& body) {
  const uint64_t nblocks = uint64_t(grid.x) * grid.y * grid.z;
  const int nthreads = int(block.x * block.y * block.z);
  // shuffled block order, reproducible from the launch count
  std::vector<uint64_t> order(nblocks);
  for (uint64_t i = 0; i < nblocks; ++i) order[i] = i;
  uint64_t st = 0x9e3779b97f4a7c15ull * (++g_launches) + 1;
  for (uint64_t i = nblocks; i > 1; --i) {
    st ^= st << 13;
    st ^= st >> 7;
    st ^= st << 17;
    std::swap(order[i - 1], order[st % i]);
  }
  (void)kernel;
  for (uint64_t bi : order) {
    Block b;
    b.kernel = name;
    b.idx = uint3{unsigned(bi % grid.x), unsigned(bi / grid.x % grid.y),
                  unsigned(bi / (uint64_t(grid.x) * grid.y))};
    b.nthreads = b.live = nthreads;
    b.threads.resize(size_t(nthreads));
    b.warps.resize(size_t((nthreads + 31) / 32));
    for (int i = 0; i < nthreads; ++i) {
      Thread& t = b.threads[size_t(i)];
      t.block = &b;
      t.linear = i;
      t.tid = uint3{unsigned(i) % block.x, unsigned(i) / block.x % block.y,
                    unsigned(i) / (block.x * block.y)};
      b.warps[size_t(i / 32)].live |= 1u << (i % 32);
    }
    std::unique_ptr<unsigned char[]> sm(smem ? new unsigned char[smem] : nullptr);
    if (smem) std::memset(sm.get(), 0xff, smem);
    b.smem = sm.get();
    b.smem_bytes = smem;
    blockDim = block;
    gridDim = grid;
    // OS-thread workers set the launch configuration in their own thread_locals
    std::function<void()> wrapped = [&body, block, grid] {
      blockDim = block;
      gridDim = grid;
      body();
    };
    b.body = &wrapped;
    const std::string msg = run_block(b);
    if (!msg.empty()) {
      set_error(cudaErrorLaunchFailure, std::string("kernel ") + name + ": " + msg);
      return;
    }
  }
}

}  // namespace

void launch_body(const char* name, const void* kernel, dim3 grid, dim3 block, size_t smem,
                 cudaStream_t s, std::function<void()> body) {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  std::ostringstream bad;
  if (threads == 0 || threads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64)
    bad << "block (" << block.x << "," << block.y << "," << block.z << ") is not a valid size";
  else if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu ||
           grid.y > 65535 || grid.z > 65535)
    bad << "grid (" << grid.x << "," << grid.y << "," << grid.z << ") is not a valid size";
  else {
    size_t limit = kDefaultSmemLimit;
    {
      std::lock_guard<std::mutex> g(g_mu);
      auto it = g_smem_limit.find(kernel);
      if (it != g_smem_limit.end()) limit = it->second;
    }
    if (smem > limit)
      bad << smem << " bytes of dynamic shared memory exceed the kernel's limit of " << limit
          << (limit == kDefaultSmemLimit ? " (raise it with cudaFuncSetAttribute)" : "");
  }
  if (!bad.str().empty()) {
    set_error(cudaErrorInvalidConfiguration, std::string("kernel ") + name + ": " + bad.str());
    return;
  }
  std::string kname = name;
  enqueue(s, [kname, kernel, grid, block, smem, body = std::move(body)] {
    run_grid(kname.c_str(), kernel, grid, block, smem, body);
  });
}

unsigned char* dynamic_smem() { return self().block->smem; }

unsigned lane_id() { return unsigned(self().linear % 32); }

void trap(const char* what) { fault(what); }

bool fibers() {
#if defined(GPTOSS_EMU_HAVE_FIBERS)
  return !env_threads();
#else
  return false;
#endif
}

int block_barrier_count(const char* file, int line, int pred) {
  Thread& t = self();
  Block& b = *t.block;
  std::unique_lock<std::mutex> lk(b.mu);
  if (b.arrived == 0) {
    b.bar_file = file;
    b.bar_line = line;
  } else if (b.bar_line != line || std::strcmp(b.bar_file, file) != 0) {
    std::ostringstream s;
    s << thread_name(t) << ": __syncthreads at " << file << ":" << line << " while other threads"
      << " wait at " << b.bar_file << ":" << b.bar_line;
    b.fail_locked(s.str());
    throw Abort{};
  }
  t.where_what = "at __syncthreads";
  t.where_file = file;
  t.where_line = line;
  const uint64_t my = b.gen;
  b.accum += pred;
  ++b.arrived;
  ++b.progress;
  if (b.arrived == b.live) {
    b.arrived = 0;
    b.result = b.accum;
    b.accum = 0;
    ++b.gen;
    b.cv.notify_all();
  }
  wait_until(lk, t, [&] { return b.gen != my; });
  t.where_what = "running";
  return b.result;
}

void block_barrier(const char* file, int line) { block_barrier_count(file, line, 0); }

void warp_gather(unsigned mask, const void* mine, size_t bytes, void* out, const char* what) {
  Thread& t = self();
  Block& b = *t.block;
  if (bytes > kMaxGather) fault(std::string(what) + ": too many bytes for a warp exchange");
  const int lane = t.linear % 32;
  std::unique_lock<std::mutex> lk(b.mu);
  Warp& w = b.warps[size_t(t.linear / 32)];
  auto bad = [&](const std::string& m) {
    b.fail_locked(thread_name(t) + ": " + what + ": " + m);
    throw Abort{};
  };
  if (!(mask >> lane & 1u)) bad("the calling lane is not in the mask");
  if (mask & ~w.live) {
    std::ostringstream s;
    s << "the mask 0x" << std::hex << mask << " names lanes that have exited (live 0x" << w.live
      << ")";
    bad(s.str());
  }
  Collective* c = nullptr;
  for (auto& p : w.pending) {
    if (p.complete) continue;
    if (p.mask == mask) {
      c = &p;
      break;
    }
    if (p.mask & mask) {
      std::ostringstream s;
      s << "mask 0x" << std::hex << mask << " overlaps the mask 0x" << p.mask
        << " of a pending " << p.what;
      bad(s.str());
    }
  }
  if (!c) {
    w.pending.emplace_back();
    c = &w.pending.back();
    c->mask = mask;
    c->what = what;
    c->bytes = bytes;
  } else if (std::strcmp(c->what, what) != 0 || c->bytes != bytes) {
    bad(std::string("lanes of one warp at different collectives (the other: ") + c->what + ")");
  }
  if (bytes) std::memcpy(c->data[lane], mine, bytes);
  c->arrived |= 1u << lane;
  ++b.progress;
  if (c->arrived == c->mask) {
    c->complete = true;
    c->readers = __builtin_popcount(mask);
    w.cv->notify_all();
  }
  t.where_what = what;
  t.where_file = "";
  wait_until(lk, t, [&] { return c->complete; }, w.cv.get());
  t.where_what = "running";
  if (bytes) {
    unsigned char* o = static_cast<unsigned char*>(out);
    for (int l = 0; l < 32; ++l) {
      if (mask >> l & 1u)
        std::memcpy(o + size_t(l) * bytes, c->data[l], bytes);
      else
        std::memset(o + size_t(l) * bytes, 0xff, bytes);
    }
  }
  if (--c->readers == 0) {
    for (auto it = w.pending.begin(); it != w.pending.end(); ++it)
      if (&*it == c) {
        w.pending.erase(it);
        break;
      }
  }
}

// ------------------------------------------------------------------------------ tensor cores
namespace {
float bf16_lo(uint32_t r) { return __uint_as_float(r << 16); }
float bf16_hi(uint32_t r) { return __uint_as_float(r & 0xffff0000u); }

// the block's dynamic shared memory is the only shared memory there is
bool in_smem(const void* p, size_t bytes) {
  const Block& b = *self().block;
  const uintptr_t s = reinterpret_cast<uintptr_t>(b.smem), q = reinterpret_cast<uintptr_t>(p);
  return b.smem && q >= s && q - s + bytes <= b.smem_bytes;
}
}  // namespace

void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  struct Frag {
    uint32_t a[4], b[2];
  } mine{{a[0], a[1], a[2], a[3]}, {b[0], b[1]}}, all[32];
  warp_gather(0xffffffffu, &mine, sizeof(Frag), all, "mma.sync.m16n8k16");
  // element accessors following the documented fragment layouts
  auto A = [&](int row, int col) {  // 16 x 16
    const int g = row % 8, j = (row / 8) | ((col / 8) << 1), t = (col % 8) / 2;
    const uint32_t r = all[g * 4 + t].a[j];
    return (col & 1) ? bf16_hi(r) : bf16_lo(r);
  };
  auto B = [&](int k, int col) {  // 16 x 8
    const int j = k / 8, t = (k % 8) / 2;
    const uint32_t r = all[col * 4 + t].b[j];
    return (k & 1) ? bf16_hi(r) : bf16_lo(r);
  };
  const int lane = int(lane_id()), g = lane / 4, t = lane % 4;
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
    float acc = 0.0f;
    for (int k = 0; k < 16; ++k) acc += A(row, k) * B(k, col);  // products exact in f32
    d[i] += acc;
  }
}

void ldmatrix(uint32_t* r, int nmat, bool trans, const void* smem_row) {
  const int lane = int(lane_id());
  const bool gives = lane < nmat * 8;
  if (gives && (reinterpret_cast<uintptr_t>(smem_row) % 16 != 0 || !in_smem(smem_row, 16)))
    fault("ldmatrix: row address is not 16-byte aligned shared memory");
  const void* addrs[32];
  warp_gather(0xffffffffu, &smem_row, sizeof(void*), addrs,
              nmat == 4 ? "ldmatrix.x4" : (nmat == 2 ? "ldmatrix.x2" : "ldmatrix.x1"));
  const int g = lane / 4, t = lane % 4;
  for (int m = 0; m < nmat; ++m) {
    uint16_t lo, hi;
    if (!trans) {
      const unsigned char* row = static_cast<const unsigned char*>(addrs[m * 8 + g]);
      std::memcpy(&lo, row + 4 * t, 2);
      std::memcpy(&hi, row + 4 * t + 2, 2);
    } else {
      const unsigned char* r0 = static_cast<const unsigned char*>(addrs[m * 8 + 2 * t]);
      const unsigned char* r1 = static_cast<const unsigned char*>(addrs[m * 8 + 2 * t + 1]);
      std::memcpy(&lo, r0 + 2 * g, 2);
      std::memcpy(&hi, r1 + 2 * g, 2);
    }
    r[m] = uint32_t(lo) | (uint32_t(hi) << 16);
  }
}

void cp_async(void* smem, const void* gmem, int bytes, int src_bytes) {
  Thread& t = self();
  if (reinterpret_cast<uintptr_t>(smem) % size_t(bytes) != 0 || !in_smem(smem, size_t(bytes)))
    fault("cp.async: destination is not aligned shared memory");
  if (src_bytes < 0 || src_bytes > bytes) fault("cp.async: src_bytes out of range");
  if (src_bytes > 0 && reinterpret_cast<uintptr_t>(gmem) % size_t(bytes) != 0)
    fault("cp.async: source is not aligned");
  std::memset(smem, 0xff, size_t(bytes));  // poisoned until the copy is waited for
  t.copies.push_back({smem, gmem, bytes, src_bytes, t.group});
}

void cp_async_commit() { ++self().group; }

void cp_async_wait(int n) {
  Thread& t = self();
  // complete every committed group except the newest n
  const int upto = t.group - n;  // groups < upto complete
  std::vector<PendingCopy> keep;
  for (auto& c : t.copies) {
    if (c.group < upto) {
      if (c.src_bytes > 0) std::memcpy(c.dst, c.src, size_t(c.src_bytes));
      std::memset(static_cast<char*>(c.dst) + c.src_bytes, 0, size_t(c.bytes - c.src_bytes));
    } else {
      keep.push_back(c);
    }
  }
  t.copies.swap(keep);
}

}  // namespace gptoss_emu

// ------------------------------------------------------------------------------ runtime API
using gptoss_emu::set_error;

cudaError_t cudaMalloc(void** p, size_t bytes) {
  if (!p) return set_error(cudaErrorInvalidValue, "cudaMalloc: null pointer");
  if (cudaError_t e = gptoss_emu::sync_call("cudaMalloc")) return e;
  void* q = nullptr;
  if (posix_memalign(&q, 256, bytes ? bytes : 1) != 0)
    return set_error(cudaErrorMemoryAllocation, "cudaMalloc: out of memory");
  std::memset(q, 0xff, bytes);  // fresh device memory reads as NaN
  std::lock_guard<std::mutex> g(gptoss_emu::g_mu);
  gptoss_emu::g_allocs[q] = bytes;
  *p = q;
  return cudaSuccess;
}

cudaError_t cudaFree(void* p) {
  if (!p) return cudaSuccess;
  {
    std::lock_guard<std::mutex> g(gptoss_emu::g_mu);
    auto it = gptoss_emu::g_allocs.find(p);
    if (it == gptoss_emu::g_allocs.end()) {
      if (gptoss_emu::g_last == cudaSuccess) {
        gptoss_emu::g_last = cudaErrorInvalidDevicePointer;
        gptoss_emu::g_msg = "cudaFree: not a device allocation";
      }
      return cudaErrorInvalidDevicePointer;
    }
    gptoss_emu::g_allocs.erase(it);
  }
  std::free(p);
  return cudaSuccess;
}

cudaError_t cudaMallocHost(void** p, size_t bytes) {
  *p = std::malloc(bytes ? bytes : 1);
  return *p ? cudaSuccess : set_error(cudaErrorMemoryAllocation, "cudaMallocHost: out of memory");
}
cudaError_t cudaFreeHost(void* p) {
  std::free(p);
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  if (cudaError_t e = gptoss_emu::sync_call("cudaMemcpy")) return e;
  if (bytes && (!dst || !src)) return set_error(cudaErrorInvalidValue, "cudaMemcpy: null pointer");
  if (bytes) std::memmove(dst, src, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind,
                            cudaStream_t s) {
  if (bytes && (!dst || !src))
    return set_error(cudaErrorInvalidValue, "cudaMemcpyAsync: null pointer");
  return gptoss_emu::enqueue(s, [=] {
    if (bytes) std::memmove(dst, src, bytes);
  });
}

cudaError_t cudaMemset(void* dst, int value, size_t bytes) {
  if (cudaError_t e = gptoss_emu::sync_call("cudaMemset")) return e;
  if (bytes) std::memset(dst, value, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t s) {
  return gptoss_emu::enqueue(s, [=] {
    if (bytes) std::memset(dst, value, bytes);
  });
}

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  *free_bytes = size_t(16) << 30;
  *total_bytes = size_t(16) << 30;
  return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t* s) {
  *s = new CUstream_st();
  return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) { return cudaStreamCreate(s); }
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  delete s;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  if (s && s->capture)
    return set_error(cudaErrorStreamCaptureUnsupported,
                     "cudaStreamSynchronize on a stream that is being captured");
  return gptoss_emu::sync_call("cudaStreamSynchronize");
}
cudaError_t cudaDeviceSynchronize() { return gptoss_emu::sync_call("cudaDeviceSynchronize"); }

cudaError_t cudaGetLastError() {
  std::lock_guard<std::mutex> g(gptoss_emu::g_mu);
  const cudaError_t e = gptoss_emu::g_last;
  gptoss_emu::g_last = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() {
  std::lock_guard<std::mutex> g(gptoss_emu::g_mu);
  return gptoss_emu::g_last;
}

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
  }
  return "cudaErrorUnknown";
}

// The message of the most recent failure (emulation detail: which kernel, block, thread, why).
const char* cudaGetErrorString(cudaError_t e) {
  static thread_local std::string s;
  std::lock_guard<std::mutex> g(gptoss_emu::g_mu);
  s = std::string(cudaGetErrorName(e)) +
      (gptoss_emu::g_msg.empty() ? std::string() : " (emulated: " + gptoss_emu::g_msg + ")");
  return s.c_str();
}

cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) {
  return d == 0 ? cudaSuccess : set_error(cudaErrorInvalidValue, "cudaSetDevice: one device");
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d) {
  if (d != 0) return set_error(cudaErrorInvalidValue, "cudaGetDeviceProperties: one device");
  std::memset(p, 0, sizeof(*p));
  std::snprintf(p->name, sizeof(p->name), "gptoss CUDA emulation on the host CPU (%s threads)",
                gptoss_emu::fibers() ? "fiber" : "OS");
  p->totalGlobalMem = size_t(16) << 30;
  p->sharedMemPerBlock = gptoss_emu::kDefaultSmemLimit;
  p->sharedMemPerBlockOptin = gptoss_emu::kMaxSmem;
  p->warpSize = 32;
  p->maxThreadsPerBlock = 1024;
  p->multiProcessorCount = 8;
  p->major = 8;
  p->minor = 0;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int) {
  switch (a) {
    case cudaDevAttrMultiProcessorCount: *v = 8; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = int(gptoss_emu::kMaxSmem); return cudaSuccess;
  }
  return set_error(cudaErrorInvalidValue, "cudaDeviceGetAttribute: attribute not emulated");
}
cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute a, int value) {
  if (a != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
      size_t(value) > gptoss_emu::kMaxSmem)
    return set_error(cudaErrorInvalidValue, "cudaFuncSetAttribute: unsupported attribute/value");
  std::lock_guard<std::mutex> g(gptoss_emu::g_mu);
  gptoss_emu::g_smem_limit[func] = size_t(value);
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = new CUevent_st();
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete e;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  return gptoss_emu::enqueue(s, [e] { e->t = std::chrono::steady_clock::now(); });
}
cudaError_t cudaEventSynchronize(cudaEvent_t) { return gptoss_emu::sync_call("cudaEventSynchronize"); }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  *ms = std::chrono::duration<float, std::milli>(b->t - a->t).count();
  return cudaSuccess;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode) {
  if (!s) return set_error(cudaErrorStreamCaptureUnsupported, "capture of the legacy stream");
  if (s->capture) return set_error(cudaErrorInvalidValue, "the stream is already capturing");
  s->capture = new CUgraph_st();
  ++gptoss_emu::g_capturing;
  return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* g) {
  if (!s || !s->capture) return set_error(cudaErrorInvalidValue, "the stream is not capturing");
  --gptoss_emu::g_capturing;
  *g = s->capture;
  s->capture = nullptr;
  return cudaSuccess;
}
cudaError_t cudaStreamIsCapturing(cudaStream_t s, cudaStreamCaptureStatus* st) {
  *st = (s && s->capture) ? cudaStreamCaptureStatusActive : cudaStreamCaptureStatusNone;
  return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t g, unsigned long long) {
  *exec = new CUgraphExec_st{g->ops};
  return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s) {
  for (auto& op : exec->ops) gptoss_emu::enqueue(s, op);
  return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  delete exec;
  return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t g) {
  delete g;
  return cudaSuccess;
}
