// CPU emulation of kernel execution (see cuda_emu.h); the runtime API is in
// cuda_emu_runtime.cc.
//
// Kernel execution: RunKernel runs the blocks of a grid one after another on
// the calling host thread. Every thread of a block is a fiber with its own
// stack (allocated once, reused by later blocks and launches). A fiber runs
// until it reaches a synchronization point (__syncthreads, a warp
// collective) or exits; it then records what it waits for and switches
// directly to the next fiber of the block's ready queue. The arrival that
// completes a barrier or collective makes its waiters ready again. When the
// queue runs dry while some thread still waits, nothing can ever release it:
// the block deadlocked, which is reported with every thread's state.
//
// Warp collectives pair up per mask value: the n-th collective a lane makes
// with mask M matches the n-th one of every other lane of M. So groups of 8
// or 16 lanes that shuffle with their own masks pair up within their group,
// and lanes that all name the full mask pair up across divergent code, as on
// Volta and later GPUs.
//
// Context switches: on x86-64 a small assembly routine saves the callee-saved
// registers and swaps stack pointers (swapcontext also makes a system call
// for the signal mask, which is far slower); elsewhere, or with
// -DTFMH_EMU_UCONTEXT, ucontext's makecontext / swapcontext. Under
// AddressSanitizer every switch is announced with
// __sanitizer_start_switch_fiber / __sanitizer_finish_switch_fiber.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gpu_kernels/emu/cuda_emu.h"
#include "gpu_kernels/emu/cuda_emu_internal.h"

#if defined(__x86_64__) && !defined(TFMH_EMU_UCONTEXT)
#define TFMH_EMU_ASM_SWITCH 1
#else
#define TFMH_EMU_ASM_SWITCH 0
#include <ucontext.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#define TFMH_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TFMH_EMU_ASAN 1
#endif
#endif
#ifndef TFMH_EMU_ASAN
#define TFMH_EMU_ASAN 0
#endif
#if TFMH_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

namespace tfmh_emu {
namespace internal {

thread_local const Coords* tls_coords = nullptr;

namespace {

#if TFMH_EMU_ASAN
constexpr size_t kStackBytes = size_t{1} << 20;  // ASan frames are larger
#else
constexpr size_t kStackBytes = size_t{256} << 10;
#endif

// Block order. A GPU runs the blocks of a grid in no promised order, and a
// kernel must not depend on it (results that do, such as the rounding of
// float atomics from many blocks, vary between runs). By default the blocks
// run in index order; with TFMH_EMU_SHUFFLE_BLOCKS=<seed> (a nonzero integer)
// or after ShuffleBlocks(seed), every launch runs them in a fresh
// pseudo-random order drawn from the seed and a launch counter, so repeated
// runs of the same launches see different orders (and a run of a program
// with the same seed sees the same ones).
// (Initialized on first use: ShuffleBlocks may run in another file's static
// initializer.)
std::atomic<uint64_t>& ShuffleSeed() {
  static std::atomic<uint64_t> seed{[] {
    const char* env = std::getenv("TFMH_EMU_SHUFFLE_BLOCKS");
    return env != nullptr ? std::strtoull(env, nullptr, 10) : 0ull;
  }()};
  return seed;
}
std::atomic<uint64_t> g_launch_count{0};

// ------------------------------------------------------------ fibers
// A fiber stack: mmap'd, with an inaccessible guard page below it so that an
// overflow faults instead of corrupting a neighbour.
class Stack {
 public:
  Stack() {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    map_bytes_ = kStackBytes + page;
    void* m = mmap(nullptr, map_bytes_, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
      std::fprintf(stderr, "tfmh CUDA emulation: cannot map a fiber stack\n");
      std::abort();
    }
    mprotect(m, page, PROT_NONE);
    map_ = static_cast<char*>(m);
    lo_ = map_ + page;
  }
  ~Stack() { munmap(map_, map_bytes_); }
  Stack(const Stack&) = delete;
  Stack& operator=(const Stack&) = delete;

  char* lo() const { return lo_; }
  char* hi() const { return lo_ + kStackBytes; }

 private:
  char* map_ = nullptr;
  char* lo_ = nullptr;
  size_t map_bytes_ = 0;
};

// Where a suspended fiber (or the host thread inside RunKernel) resumes,
// plus its stack's bounds and ASan fake stack for the fiber annotations.
struct Context {
#if TFMH_EMU_ASM_SWITCH
  void* sp = nullptr;
#else
  ucontext_t uc;
#endif
  const void* stack_lo = nullptr;
  size_t stack_size = 0;
  void* fake_stack = nullptr;
};

#if TFMH_EMU_ASM_SWITCH
// tfmh_emu_switch(&from_sp, to_sp): pushes the callee-saved registers, the
// SSE control/status word and the x87 control word on the current stack,
// saves the stack pointer in *from_sp, loads to_sp and pops the same from
// there. A new fiber's stack is prepared to look like a suspended one whose
// return address is the fiber's entry function.
extern "C" void tfmh_emu_switch(void** from_sp, void* to_sp);
__asm__(
    ".text\n"
    ".globl tfmh_emu_switch\n"
    ".hidden tfmh_emu_switch\n"
    ".type tfmh_emu_switch, @function\n"
    "tfmh_emu_switch:\n"
    "  pushq %rbp\n"
    "  pushq %rbx\n"
    "  pushq %r12\n"
    "  pushq %r13\n"
    "  pushq %r14\n"
    "  pushq %r15\n"
    "  subq $8, %rsp\n"
    "  stmxcsr (%rsp)\n"
    "  fnstcw 4(%rsp)\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  ldmxcsr (%rsp)\n"
    "  fldcw 4(%rsp)\n"
    "  addq $8, %rsp\n"
    "  popq %r15\n"
    "  popq %r14\n"
    "  popq %r13\n"
    "  popq %r12\n"
    "  popq %rbx\n"
    "  popq %rbp\n"
    "  ret\n"
    ".size tfmh_emu_switch, .-tfmh_emu_switch\n");

void PrepareContext(Context* c, const Stack& stack, void (*entry)()) {
  uint64_t* sp = reinterpret_cast<uint64_t*>(
      reinterpret_cast<uintptr_t>(stack.hi()) & ~uintptr_t{15});
  *--sp = 0;  // the entry function's return address: it never returns
  *--sp = reinterpret_cast<uint64_t>(entry);
  for (int r = 0; r < 6; ++r) *--sp = 0;  // rbp, rbx, r12 - r15
  uint32_t mxcsr;
  uint16_t fpu_cw;
  __asm__ __volatile__("stmxcsr %0" : "=m"(mxcsr));
  __asm__ __volatile__("fnstcw %0" : "=m"(fpu_cw));
  --sp;
  std::memcpy(sp, &mxcsr, 4);
  std::memcpy(reinterpret_cast<char*>(sp) + 4, &fpu_cw, 2);
  c->sp = sp;
}

void RawSwitch(Context* from, Context* to) {
  tfmh_emu_switch(&from->sp, to->sp);
}
#else
void PrepareContext(Context* c, const Stack& stack, void (*entry)()) {
  getcontext(&c->uc);
  c->uc.uc_stack.ss_sp = stack.lo();
  c->uc.uc_stack.ss_size = kStackBytes;
  c->uc.uc_link = nullptr;
  makecontext(&c->uc, entry, 0);
}

void RawSwitch(Context* from, Context* to) { swapcontext(&from->uc, &to->uc); }
#endif

// ------------------------------------------------------------ threads
enum class State : uint8_t { kReady, kRunning, kBarrier, kWarp, kExited };

// One emulated thread. Objects (and their stacks) are pooled and reused by
// every block.
struct Thread {
  Coords coords;
  int index = 0;  // linear index within the block
  int warp = 0;
  int lane = 0;
  State state = State::kReady;
  Context ctx;
  Stack stack;
  // The lowest stack address the previous fiber may have left poisoned.
  char* dirty_lo = nullptr;

  // The collective this thread waits in (state kWarp or kBarrier). `in` and
  // `out` point into the waiting fiber's frame, alive while it waits.
  WarpOp op = WarpOp::kSyncWarp;
  unsigned mask = 0;
  uint64_t seq = 0;
  int arg = 0, width = 32, size = 0;
  const void* in = nullptr;
  void* out = nullptr;
  int barrier_kind = 0, predicate = 0;
  // Collectives made so far, per mask value.
  std::vector<std::pair<unsigned, uint64_t>> mask_counts;

  uint64_t NextSeq(unsigned m) {
    for (auto& mc : mask_counts) {
      if (mc.first == m) return mc.second++;
    }
    mask_counts.emplace_back(m, 1);
    return 0;
  }
};

int PopCount(unsigned x) {
  int n = 0;
  for (; x != 0; x &= x - 1) ++n;
  return n;
}

// The lane whose value lane `lane` receives from a shuffle, as PTX's
// shfl.sync modes define it for segments of `width` lanes: idx reads
// lane (segment start | src % width); up and down read lane -/+ delta, or
// the lane's own value when that leaves the segment; xor reads lane ^ mask,
// or its own value when that lies past the segment's end.
int ShuffleSource(WarpOp op, int lane, int arg, int width) {
  const int min_lane = lane & ~(width - 1);
  const int max_lane = min_lane + width - 1;
  switch (op) {
    case WarpOp::kShflIdx:
      return min_lane | (arg & (width - 1));
    case WarpOp::kShflUp:
      return (arg >= 0 && lane - arg >= min_lane) ? lane - arg : lane;
    case WarpOp::kShflDown:
      return (arg >= 0 && arg < 32 && lane + arg <= max_lane) ? lane + arg
                                                              : lane;
    case WarpOp::kShflXor: {
      const int x = lane ^ arg;
      return (x >= 0 && x <= max_lane) ? x : lane;
    }
    default:
      return lane;
  }
}

const char* OpName(WarpOp op) {
  switch (op) {
    case WarpOp::kSyncWarp: return "__syncwarp";
    case WarpOp::kShflIdx: return "__shfl_sync";
    case WarpOp::kShflUp: return "__shfl_up_sync";
    case WarpOp::kShflDown: return "__shfl_down_sync";
    case WarpOp::kShflXor: return "__shfl_xor_sync";
    case WarpOp::kBallot: return "__ballot_sync";
    case WarpOp::kAny: return "__any_sync";
    case WarpOp::kAll: return "__all_sync";
    case WarpOp::kMatchAny: return "__match_any_sync";
    case WarpOp::kMatchAll: return "__match_all_sync";
  }
  return "?";
}

const char* BarrierName(int kind) {
  static const char* const kNames[] = {"__syncthreads", "__syncthreads_count",
                                       "__syncthreads_and", "__syncthreads_or"};
  return kNames[kind];
}

std::mutex g_launch_mu;  // one launch at a time, over all host threads
std::vector<std::unique_ptr<Thread>> g_pool;  // guarded by g_launch_mu

class BlockRunner;
thread_local BlockRunner* tls_runner = nullptr;

// Runs the blocks of one launch.
class BlockRunner {
 public:
  BlockRunner(const LaunchSite& site, dim3 grid, dim3 block,
              size_t shared_bytes, ThreadMain thread_main, const void* bound)
      : site_(site),
        grid_(grid),
        block_(block),
        thread_main_(thread_main),
        bound_(bound),
        num_threads_(static_cast<int>(block.x * block.y * block.z)),
        num_warps_((num_threads_ + 31) / 32),
        shared_bytes_(shared_bytes),
        queue_(num_threads_),
        pending_(num_warps_) {
    while (static_cast<int>(g_pool.size()) < num_threads_) {
      g_pool.push_back(std::make_unique<Thread>());
    }
    // Exactly shared_bytes (16-byte aligned), so that ASan sees overruns.
    void* p = nullptr;
    if (posix_memalign(&p, 16, std::max<size_t>(shared_bytes, 1)) != 0) {
      std::fprintf(stderr, "tfmh CUDA emulation: out of host memory\n");
      std::abort();
    }
    shared_ = static_cast<char*>(p);
  }
  ~BlockRunner() { std::free(shared_); }

  void RunGrid() {
    const uint64_t seed = ShuffleSeed().load(std::memory_order_relaxed);
    if (seed == 0) {
      for (unsigned z = 0; z < grid_.z; ++z) {
        for (unsigned y = 0; y < grid_.y; ++y) {
          for (unsigned x = 0; x < grid_.x; ++x) RunBlock(make_uint3(x, y, z));
        }
      }
      return;
    }
    const uint64_t nx = grid_.x, ny = grid_.y;
    std::vector<uint64_t> order(nx * ny * grid_.z);
    std::iota(order.begin(), order.end(), uint64_t{0});
    std::mt19937_64 gen(seed * 0x9E3779B97F4A7C15ull + g_launch_count++);
    std::shuffle(order.begin(), order.end(), gen);
    for (uint64_t b : order) {
      RunBlock(make_uint3(static_cast<unsigned>(b % nx),
                          static_cast<unsigned>(b / nx % ny),
                          static_cast<unsigned>(b / (nx * ny))));
    }
  }

  char* shared() const { return shared_; }
  Thread* current() const { return current_; }

  // A warp collective of the current thread.
  void Collective(WarpOp op, unsigned mask, const void* in, void* out,
                  int size, int arg, int width) {
    Thread* self = current_;
    const bool shuffle = op >= WarpOp::kShflIdx && op <= WarpOp::kShflXor;
    if (((mask >> self->lane) & 1u) == 0) {
      Fatal(self, Format("%s(mask 0x%08x) from lane %d, which is not in the "
                         "mask", OpName(op), mask, self->lane));
    }
    if (shuffle && (width < 1 || width > 32 || (width & (width - 1)) != 0)) {
      Fatal(self, Format("%s with width %d (must be a power of two <= 32)",
                         OpName(op), width));
    }
    const unsigned exists = LanesOf(self->warp);
    if ((mask & ~exists) != 0) {
      Fatal(self, Format("%s(mask 0x%08x) names lanes 0x%08x that this block "
                         "(%d threads) does not have", OpName(op), mask,
                         mask & ~exists, num_threads_));
    }
    self->op = op;
    self->mask = mask;
    self->seq = self->NextSeq(mask);
    self->arg = arg;
    self->width = width;
    self->size = size;
    self->in = in;
    self->out = out;
    self->state = State::kWarp;
    std::vector<Pending>& pend = pending_[self->warp];
    size_t k = 0;
    while (k < pend.size() &&
           !(pend[k].mask == mask && pend[k].seq == self->seq)) {
      ++k;
    }
    if (k == pend.size()) {
      pend.push_back(Pending{mask, self->seq, 0, PopCount(mask)});
    }
    if (++pend[k].arrived == pend[k].lanes) {
      pend.erase(pend.begin() + static_cast<std::ptrdiff_t>(k));
      Complete(self->warp, mask);
    }
    Park(self);
  }

  // __syncthreads (kind 0) or one of its reductions; returns the result.
  int Barrier(int kind, int predicate) {
    Thread* self = current_;
    int result = 0;
    self->state = State::kBarrier;
    self->barrier_kind = kind;
    self->predicate = predicate;
    self->out = &result;
    ++at_barrier_;
    if (at_barrier_ == live_) ReleaseBarrier();
    Park(self);
    return result;
  }

  unsigned ActiveLanes() const {
    const Thread* self = current_;
    unsigned m = 0;
    for (int l = 0; l < 32; ++l) {
      const int t = self->warp * 32 + l;
      if (t < num_threads_ && g_pool[t]->state != State::kExited) m |= 1u << l;
    }
    return m;
  }

  [[noreturn]] void Fatal(const Thread* t, const std::string& what) const {
    std::fprintf(stderr,
                 "tfmh CUDA emulation: %s\n  in thread (%u,%u,%u) (warp %d "
                 "lane %d) of block (%u,%u,%u)\n%s",
                 what.c_str(), t->coords.thread_idx.x, t->coords.thread_idx.y,
                 t->coords.thread_idx.z, t->warp, t->lane, block_idx_.x,
                 block_idx_.y, block_idx_.z, Where().c_str());
    std::fflush(stderr);
    std::abort();
  }

  // The fiber's entry function: runs the kernel on the current thread.
  static void FiberMain() {
    BlockRunner* r = tls_runner;
    r->AsanFinishSwitch(nullptr);
    Thread* self = r->current_;
    r->thread_main_(r->bound_);
    r->Exit(self);
  }

 private:
  // A collective that some lanes of a warp reached.
  struct Pending {
    unsigned mask;
    uint64_t seq;
    int arrived;
    int lanes;  // lanes in the mask
  };

  // A FIFO of ready threads; each thread is in it at most once.
  class Queue {
   public:
    explicit Queue(int capacity) : items_(static_cast<size_t>(capacity)) {}
    void Clear() { head_ = size_ = 0; }
    bool Empty() const { return size_ == 0; }
    void Push(Thread* t) {
      items_[(head_ + size_) % items_.size()] = t;
      ++size_;
    }
    Thread* Pop() {
      Thread* t = items_[head_];
      head_ = (head_ + 1) % items_.size();
      --size_;
      return t;
    }

   private:
    std::vector<Thread*> items_;
    size_t head_ = 0, size_ = 0;
  };

  unsigned LanesOf(int warp) const {
    const int n = std::min(32, num_threads_ - warp * 32);
    return n >= 32 ? 0xffffffffu : ((1u << n) - 1u);
  }

  void RunBlock(uint3 block_idx) {
    block_idx_ = block_idx;
    std::memset(shared_, kGarbage, shared_bytes_);
    queue_.Clear();
    for (auto& p : pending_) p.clear();
    for (int i = 0; i < num_threads_; ++i) {
      Thread* t = g_pool[i].get();
      t->index = i;
      t->warp = i / 32;
      t->lane = i % 32;
      t->coords.thread_idx =
          make_uint3(i % block_.x, (i / block_.x) % block_.y,
                     i / (block_.x * block_.y));
      t->coords.block_idx = block_idx;
      t->coords.block_dim = block_;
      t->coords.grid_dim = grid_;
      t->state = State::kReady;
      t->mask_counts.clear();
#if TFMH_EMU_ASAN
      // The previous fiber on this stack ended inside functions that never
      // returned; their frames' redzones are still poisoned.
      if (t->dirty_lo != nullptr) {
        __asan_unpoison_memory_region(
            t->dirty_lo, static_cast<size_t>(t->stack.hi() - t->dirty_lo));
      }
#endif
      t->dirty_lo = nullptr;
      t->ctx.stack_lo = t->stack.lo();
      t->ctx.stack_size = kStackBytes;
      t->ctx.fake_stack = nullptr;
      PrepareContext(&t->ctx, t->stack, &BlockRunner::FiberMain);
      queue_.Push(t);
    }
    live_ = num_threads_;
    at_barrier_ = 0;
    Thread* first = queue_.Pop();
    first->state = State::kRunning;
    SwitchTo(&host_, first, false);
    // Back when the last thread exited.
    current_ = nullptr;
    tls_coords = nullptr;
  }

  // Makes every lane of (warp, mask) ready and hands each its result.
  void Complete(int warp, unsigned mask) {
    Thread* lanes[32];
    Thread* first = nullptr;
    for (int l = 0; l < 32; ++l) {
      lanes[l] = nullptr;
      if (((mask >> l) & 1u) == 0) continue;
      lanes[l] = g_pool[warp * 32 + l].get();
      if (first == nullptr) first = lanes[l];
    }
    for (int l = 0; l < 32; ++l) {
      const Thread* t = lanes[l];
      if (t == nullptr) continue;
      if (t->op != first->op ||
          (t->size != first->size) || (t->width != first->width)) {
        Fatal(t, Format("lanes of mask 0x%08x disagree: lane %d is in %s "
                        "(%d bytes, width %d), lane %d in %s (%d bytes, width "
                        "%d)", mask, first->lane, OpName(first->op),
                        first->size, first->width, t->lane, OpName(t->op),
                        t->size, t->width));
      }
    }
    const WarpOp op = first->op;
    if (op == WarpOp::kBallot || op == WarpOp::kAny || op == WarpOp::kAll) {
      unsigned ballot = 0;
      for (int l = 0; l < 32; ++l) {
        if (lanes[l] != nullptr &&
            *static_cast<const int*>(lanes[l]->in) != 0) {
          ballot |= 1u << l;
        }
      }
      const unsigned r = op == WarpOp::kBallot ? ballot
                         : op == WarpOp::kAny  ? (ballot != 0 ? 1u : 0u)
                                               : (ballot == mask ? 1u : 0u);
      for (int l = 0; l < 32; ++l) {
        if (lanes[l] != nullptr) *static_cast<unsigned*>(lanes[l]->out) = r;
      }
    } else if (op == WarpOp::kMatchAny || op == WarpOp::kMatchAll) {
      // Values compare bitwise, as 32- or 64-bit words.
      uint64_t value[32];
      for (int l = 0; l < 32; ++l) {
        value[l] = 0;
        if (lanes[l] != nullptr) {
          std::memcpy(&value[l], lanes[l]->in,
                      static_cast<size_t>(first->size));
        }
      }
      unsigned same[32] = {};  // lanes whose value equals lane l's
      unsigned left = mask;
      while (left != 0) {
        const int l = __builtin_ctz(left);
        unsigned group = 0;
        for (unsigned m = left; m != 0; m &= m - 1) {
          const int q = __builtin_ctz(m);
          if (value[q] == value[l]) group |= 1u << q;
        }
        for (unsigned m = group; m != 0; m &= m - 1) {
          same[__builtin_ctz(m)] = group;
        }
        left &= ~group;
      }
      for (int l = 0; l < 32; ++l) {
        if (lanes[l] == nullptr) continue;
        const unsigned r = op == WarpOp::kMatchAny ? same[l]
                           : same[l] == mask      ? mask
                                                  : 0u;
        *static_cast<unsigned*>(lanes[l]->out) = r;
      }
    } else if (op != WarpOp::kSyncWarp) {
      int src[32];
      for (int l = 0; l < 32; ++l) {
        const Thread* t = lanes[l];
        if (t == nullptr) continue;
        src[l] = ShuffleSource(op, l, t->arg, t->width);
        if (lanes[src[l]] == nullptr) {
          Fatal(t, Format("%s(mask 0x%08x, value, %d, width %d) reads lane "
                          "%d, which is not in the mask (undefined on a GPU)",
                          OpName(op), mask, t->arg, t->width, src[l]));
        }
      }
      // Every lane's `in` and `out` are distinct objects in distinct frames,
      // so results can be written while other lanes' inputs are still read.
      for (int l = 0; l < 32; ++l) {
        if (lanes[l] == nullptr) continue;
        std::memcpy(lanes[l]->out, lanes[src[l]]->in,
                    static_cast<size_t>(lanes[l]->size));
      }
    }
    for (int l = 0; l < 32; ++l) {
      if (lanes[l] == nullptr) continue;
      lanes[l]->state = State::kReady;
      queue_.Push(lanes[l]);
    }
  }

  void ReleaseBarrier() {
    int kind = -1, count = 0, n = 0;
    for (int i = 0; i < num_threads_; ++i) {
      Thread* t = g_pool[i].get();
      if (t->state != State::kBarrier) continue;
      if (kind < 0) kind = t->barrier_kind;
      if (t->barrier_kind != kind) {
        Fatal(t, Format("threads of the block meet in different barriers: "
                        "%s and %s", BarrierName(kind),
                        BarrierName(t->barrier_kind)));
      }
      count += t->predicate != 0 ? 1 : 0;
      ++n;
    }
    const int result = kind == 1 ? count
                       : kind == 2 ? (count == n ? 1 : 0)
                       : kind == 3 ? (count > 0 ? 1 : 0)
                                   : 0;
    for (int i = 0; i < num_threads_; ++i) {
      Thread* t = g_pool[i].get();
      if (t->state != State::kBarrier) continue;
      *static_cast<int*>(t->out) = result;
      t->state = State::kReady;
      queue_.Push(t);
    }
    at_barrier_ = 0;
  }

  // The current thread waits: runs the next ready thread, or reports a
  // deadlock when there is none.
  void Park(Thread* self) {
    if (queue_.Empty()) Deadlock();
    Thread* next = queue_.Pop();
    next->state = State::kRunning;
    if (next == self) return;
    SwitchTo(&self->ctx, next, false);
  }

  [[noreturn]] void Exit(Thread* self) {
    self->state = State::kExited;
    --live_;
    if (live_ > 0 && at_barrier_ == live_) ReleaseBarrier();
    // What stays poisoned lies above this frame (and the few below it).
    const uintptr_t frame =
        reinterpret_cast<uintptr_t>(__builtin_frame_address(0));
    const uintptr_t lo = reinterpret_cast<uintptr_t>(self->stack.lo());
    self->dirty_lo = reinterpret_cast<char*>(
        frame - lo > 4096 ? frame - 4096 : lo);
    if (!queue_.Empty()) {
      Thread* next = queue_.Pop();
      next->state = State::kRunning;
      SwitchTo(&self->ctx, next, true);
    } else if (live_ == 0) {
      SwitchTo(&self->ctx, nullptr, true);
    } else {
      Deadlock();
    }
    std::abort();  // never resumed
  }

  // Switches from `from` to thread `to` (nullptr: back to the host).
  void SwitchTo(Context* from, Thread* to, bool from_exits) {
    Context* target = to != nullptr ? &to->ctx : &host_;
    current_ = to;
    tls_coords = to != nullptr ? &to->coords : nullptr;
    switch_from_ = from;
#if TFMH_EMU_ASAN
    __sanitizer_start_switch_fiber(from_exits ? nullptr : &from->fake_stack,
                                   target->stack_lo, target->stack_size);
#else
    (void)from_exits;
#endif
    RawSwitch(from, target);
    AsanFinishSwitch(from->fake_stack);
  }

  // Completes a switch into the running context; records the bounds of the
  // context switched from (how the host thread's stack becomes known).
  void AsanFinishSwitch(void* fake_stack) {
#if TFMH_EMU_ASAN
    const void* lo = nullptr;
    size_t size = 0;
    __sanitizer_finish_switch_fiber(fake_stack, &lo, &size);
    if (switch_from_ != nullptr) {
      switch_from_->stack_lo = lo;
      switch_from_->stack_size = size;
    }
#else
    (void)fake_stack;
#endif
  }

  std::string Where() const {
    return Format("  kernel launch %s at %s:%d\n  in %s\n  grid (%u,%u,%u), "
                  "block (%u,%u,%u), %zu bytes of dynamic shared memory\n",
                  site_.kernel, site_.file, site_.line, site_.caller, grid_.x,
                  grid_.y, grid_.z, block_.x, block_.y, block_.z,
                  shared_bytes_);
  }

  std::string Describe(const Thread* t) const {
    switch (t->state) {
      case State::kReady: return "ready";
      case State::kRunning: return "running";
      case State::kExited: return "exited";
      case State::kBarrier:
        return Format("waits in %s", BarrierName(t->barrier_kind));
      case State::kWarp:
        return Format("waits in %s(mask 0x%08x), its collective #%" PRIu64
                      " with that mask", OpName(t->op), t->mask, t->seq + 1);
    }
    return "?";
  }

  [[noreturn]] void Deadlock() const {
    std::string states;
    for (int i = 0; i < num_threads_;) {
      const std::string d = Describe(g_pool[i].get());
      int j = i + 1;
      while (j < num_threads_ && Describe(g_pool[j].get()) == d) ++j;
      states += j - i == 1
                    ? Format("    thread %d: %s\n", i, d.c_str())
                    : Format("    threads %d-%d: %s\n", i, j - 1, d.c_str());
      i = j;
    }
    std::fprintf(stderr,
                 "tfmh CUDA emulation: DEADLOCK in block (%u,%u,%u): no thread "
                 "can go on. A __syncthreads() that not every live thread of "
                 "the block reaches, or a warp collective whose mask names a "
                 "lane that exited or waits elsewhere.\n%s  threads (linear "
                 "index):\n%s",
                 block_idx_.x, block_idx_.y, block_idx_.z, Where().c_str(),
                 states.c_str());
    std::fflush(stderr);
    std::abort();
  }

  const LaunchSite& site_;
  const dim3 grid_, block_;
  const ThreadMain thread_main_;
  const void* const bound_;
  const int num_threads_, num_warps_;
  const size_t shared_bytes_;
  char* shared_ = nullptr;
  uint3 block_idx_ = {0, 0, 0};
  Queue queue_;
  std::vector<std::vector<Pending>> pending_;  // per warp
  int live_ = 0, at_barrier_ = 0;
  Thread* current_ = nullptr;
  Context host_;
  Context* switch_from_ = nullptr;
};

bool InKernel() {
  const BlockRunner* r = tls_runner;
  return r != nullptr && r->current() != nullptr;
}

// The launch checks of the runtime: cudaSuccess or the launch's error.
cudaError_t CheckLaunch(const void* kernel, dim3 grid, dim3 block,
                        size_t shared_bytes, cudaStream_t stream,
                        std::string* why) {
  const unsigned long long threads =
      static_cast<unsigned long long>(block.x) * block.y * block.z;
  if (block.x == 0 || block.y == 0 || block.z == 0 ||
      threads > kMaxThreadsPerBlock || block.z > 64) {
    *why = Format("block (%u,%u,%u): 1 to %d threads, z at most 64", block.x,
                  block.y, block.z, kMaxThreadsPerBlock);
    return cudaErrorInvalidConfiguration;
  }
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu ||
      grid.y > 65535 || grid.z > 65535) {
    *why = Format("grid (%u,%u,%u)", grid.x, grid.y, grid.z);
    return cudaErrorInvalidConfiguration;
  }
  const size_t limit = DynamicSharedLimit(kernel);
  if (shared_bytes > limit) {
    *why = Format("%zu bytes of dynamic shared memory; the limit is %zu%s",
                  shared_bytes, limit,
                  limit < kSharedPerBlockOptin
                      ? " (raise it with cudaFuncSetAttribute("
                        "cudaFuncAttributeMaxDynamicSharedMemorySize))"
                      : "");
    return cudaErrorInvalidValue;
  }
  if (!StreamOk(stream)) {
    *why = "unknown or destroyed stream";
    return cudaErrorInvalidResourceHandle;
  }
  return cudaSuccess;
}

}  // namespace

void NotInKernel(const char* what) {
  std::fprintf(stderr, "tfmh CUDA emulation: %s used outside a kernel\n", what);
  std::abort();
}

void KernelFatal(const char* what) {
  if (!InKernel()) NotInKernel(what);
  tls_runner->Fatal(tls_runner->current(), what);
}

void WarpCollective(WarpOp op, unsigned mask, const void* in, void* out,
                    int size, int arg, int width) {
  if (!InKernel()) NotInKernel(OpName(op));
  tls_runner->Collective(op, mask, in, out, size, arg, width);
}

int SyncThreads(int kind, int predicate) {
  if (!InKernel()) NotInKernel(BarrierName(kind));
  return tls_runner->Barrier(kind, predicate);
}

unsigned ActiveMask() {
  if (!InKernel()) NotInKernel("__activemask");
  return tls_runner->ActiveLanes();
}

char* DynamicShared() {
  if (!InKernel()) NotInKernel("TFMH_DYNAMIC_SHARED");
  return tls_runner->shared();
}

void RunKernel(const LaunchSite& site, const void* kernel, dim3 grid,
               dim3 block, size_t shared_bytes, cudaStream_t stream,
               ThreadMain thread_main, const void* bound) {
  if (tls_runner != nullptr) {
    KernelFatal("a kernel launched a kernel (dynamic parallelism is not "
                "emulated)");
  }
  std::string why;
  const cudaError_t e =
      CheckLaunch(kernel, grid, block, shared_bytes, stream, &why);
  if (e != cudaSuccess) {
    // Like the runtime: nothing runs, the error waits for cudaGetLastError.
    if (std::getenv("TFMH_EMU_QUIET") == nullptr) {
      std::fprintf(stderr,
                   "tfmh CUDA emulation: launch of %s at %s:%d refused: %s "
                   "(%s)\n",
                   site.kernel, site.file, site.line, why.c_str(),
                   cudaGetErrorName(e));
    }
    Record(e);
    return;
  }
  std::lock_guard<std::mutex> lock(g_launch_mu);
  BlockRunner runner(site, grid, block, shared_bytes, thread_main, bound);
  tls_runner = &runner;
  runner.RunGrid();
  tls_runner = nullptr;
}

}  // namespace internal

void ShuffleBlocks(uint64_t seed) {
  internal::ShuffleSeed().store(seed, std::memory_order_relaxed);
}

}  // namespace tfmh_emu
