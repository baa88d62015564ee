// The emulator's runtime: launches, the two ways of running a block's threads, barriers, shared memory,
// the emulated device and the CUDA error state.
//
// A launch runs its blocks one after another. Inside a block every CUDA thread is
//   * a fiber (ucontext) in the default build: one OS thread runs the fibers, always the first one in a
//     fixed order that can run (highest thread index first unless emu_set_schedule says otherwise),
//     until it reaches a barrier or ends. The run is deterministic, and a thread that reads what another
//     thread has not written yet (a missing barrier) reads the NaN the shared memory was filled with,
//     every time;
//   * a std::thread in the sanitizer builds (EMU_THREADS): the threads really run at once, the barriers
//     are a mutex and a condition variable, so ThreadSanitizer sees the same happens-before edges a GPU
//     guarantees, and nothing more.
// The barrier bookkeeping (who waits where, when a barrier opens, deadlock) is one piece of code shared by
// both.
#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "cuda_emu.h"

namespace emu {
namespace {

// ---- the emulated device ---------------------------------------------------------------------------------
struct Image {
  int arch;  // 80 for sm_80
  bool ptx;  // PTX (JIT-compiled for any newer GPU) rather than machine code for one architecture family
};
struct Device {
  int major = 8, minor = 0;
  int smem_per_block = 48 * 1024;   // without opt-in
  int smem_optin = 166912;          // cudaDevAttrMaxSharedMemoryPerBlockOptin of an A100 (163 KiB)
  std::vector<Image> images = {{80, false}, {90, false}, {90, true}};  // setup.py's default arch list
};
// Every distinct device emu_set_device describes becomes one more device index, as on a machine with
// several GPUs: state the kernels' host code keeps per device (an opt-in done once) stays right.
std::vector<Device> g_devices(1);
int g_current = 0;
Device& current_device() { return g_devices[g_current]; }
// cudaFuncAttributeMaxDynamicSharedMemorySize per (device, kernel)
std::map<std::pair<int, const void*>, int> g_max_dynamic_smem;
cudaError_t g_last_error = cudaSuccess;
std::string g_last_message;
int g_schedule = 0;  // 0: highest thread index first, 1: lowest first, >= 2: a shuffled order seeded by it

bool image_runs_here() {
  const int cc = 10 * current_device().major + current_device().minor;
  for (const Image& im : current_device().images) {
    if (im.ptx && im.arch <= cc) return true;  // the driver JIT-compiles PTX for a newer GPU
    if (!im.ptx && im.arch / 10 == current_device().major && im.arch % 10 <= current_device().minor) return true;
  }
  return false;
}

void set_error(cudaError_t err, const std::string& message) {
  g_last_error = err;
  g_last_message = message;
}

struct EmuError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct Abort {};  // unwinds the other threads of a block once one has failed

// ---- one block in flight -------------------------------------------------------------------------------
enum class St { kRunnable, kAtBlock, kAtWarp, kExited };
// One 16-byte (or smaller) cp.async in flight: the source bytes were read when it was issued, the
// destination is written when a cp.async.wait_group retires its group.
struct AsyncCopy {
  unsigned char* dst;
  unsigned char data[16];
  int bytes;
};
constexpr size_t kFiberStack = 256 * 1024;
constexpr size_t kStackGuard = 4096;

struct Lane {
  ThreadCtx ctx;
  St st = St::kRunnable;
  const char* file = "";
  int line = 0;
  BlockOp op = BlockOp::kSync;
  int value = 0, result = 0;
  unsigned mask = 0;
  int gather_words = 1;                          // words each lane contributes to a warp collective
  uint64_t gather_value[kMaxGatherWords] = {};
  uint64_t gathered[32 * kMaxGatherWords] = {};  // lane l's word w at [l * gather_words + w]
  // cp.async: copies issued but not committed, and the committed groups, oldest first (see cp_async)
  std::vector<AsyncCopy> uncommitted;
  std::deque<std::vector<AsyncCopy>> groups;
#if !defined(EMU_THREADS)
  ucontext_t uc;
  struct Stack {  // mmap'd, with an inaccessible page below it: an overflow faults instead of corrupting
    void* base = nullptr;
    Stack() = default;
    Stack(Stack&& other) noexcept : base(other.base) { other.base = nullptr; }
    Stack(const Stack&) = delete;
    Stack& operator=(const Stack&) = delete;
    ~Stack() {
      if (base) munmap(base, kFiberStack + kStackGuard);
    }
  } stack;
#endif
};

#if defined(__SANITIZE_ADDRESS__)
constexpr size_t kGuardBytes = 0;  // AddressSanitizer's own red zone must follow the last byte
#else
constexpr size_t kGuardBytes = 64;  // after each shared allocation: a write out of bounds is caught
#endif
constexpr unsigned char kGuardByte = 0xA5;
constexpr unsigned char kPrefillByte = 0xFF;  // NaN as float, half and bfloat16

struct SharedPiece {
  unsigned char* data = nullptr;
  size_t bytes = 0;
};

struct Block {
  std::vector<Lane> lanes;
  int live = 0;
  int n_warps = 0;
  const std::function<void()>* body = nullptr;
  bool abort = false;
  std::string error;
  std::mutex mu;  // the thread engine's one lock (the fiber engine never contends for it)
  std::condition_variable cv;
  SharedPiece dynamic;
  std::map<int, SharedPiece> statics;
#if !defined(EMU_THREADS)
  ucontext_t sched;
#endif
};

Block* g_block = nullptr;
thread_local Lane* t_lane = nullptr;

std::string where(const char* file, int line) {
  std::ostringstream os;
  os << file;
  if (line > 0) os << ":" << line;
  return os.str();
}

void record_failure(Block& b, const std::string& message) {
  if (b.error.empty()) b.error = message;
  b.abort = true;
}

// Opens every barrier whose waiters are all there; returns whether any opened. Caller holds b.mu in the
// thread engine. A failed check marks the block aborted instead of throwing (the scheduler calls this).
bool try_release(Block& b) {
  bool released = false;
  const int n = static_cast<int>(b.lanes.size());
  for (int w = 0; w < b.n_warps; ++w) {
    int first = -1;
    bool ready = true, any = false;
    for (int l = 32 * w; l < std::min(n, 32 * w + 32); ++l) {
      if (b.lanes[l].st != St::kAtWarp) continue;
      any = true;
      if (first < 0) first = l;
      if (b.lanes[l].mask != b.lanes[first].mask) {
        record_failure(b, "lanes of warp " + std::to_string(w) + " wait at warp barriers with different masks (" +
                              where(b.lanes[l].file, b.lanes[l].line) + ")");
        return false;
      }
    }
    if (!any) continue;
    const unsigned mask = b.lanes[first].mask;
    for (int l = 32 * w; l < std::min(n, 32 * w + 32); ++l) {
      const bool in_mask = (mask >> (l - 32 * w)) & 1u;
      if (in_mask && b.lanes[l].st != St::kAtWarp && b.lanes[l].st != St::kExited) ready = false;
    }
    if (!ready) continue;
    // Every waiting lane gets every lane's words; a lane that is not there (exited) contributes zeros.
    int words = 1;
    for (int l = 32 * w; l < std::min(n, 32 * w + 32); ++l)
      if (b.lanes[l].st == St::kAtWarp) words = std::max(words, b.lanes[l].gather_words);
    uint64_t values[32 * kMaxGatherWords] = {};
    for (int l = 32 * w; l < std::min(n, 32 * w + 32); ++l)
      if (b.lanes[l].st == St::kAtWarp)
        std::memcpy(values + (l - 32 * w) * words, b.lanes[l].gather_value,
                    sizeof(uint64_t) * b.lanes[l].gather_words);
    for (int l = 32 * w; l < std::min(n, 32 * w + 32); ++l) {
      if (b.lanes[l].st != St::kAtWarp) continue;
      std::memcpy(b.lanes[l].gathered, values, sizeof(uint64_t) * 32 * words);
      b.lanes[l].gather_words = words;
      b.lanes[l].st = St::kRunnable;
    }
    released = true;
  }
  int at_block = 0, first = -1;
  for (int l = 0; l < n; ++l)
    if (b.lanes[l].st == St::kAtBlock) {
      ++at_block;
      if (first < 0) first = l;
    }
  if (at_block > 0 && at_block == b.live) {
    const Lane& f = b.lanes[first];
    if (b.live < n) {  // undefined behaviour in CUDA: on a GPU it hangs or goes on, depending
      record_failure(b, std::to_string(n - b.live) + " threads of the block exited without reaching the "
                        "__syncthreads at " + where(f.file, f.line) +
                        " (a barrier inside a branch not every thread takes, or a return before it)");
      return false;
    }
    int reduced = f.op == BlockOp::kAnd ? 1 : 0;
    for (const Lane& l : b.lanes) {
      if (l.st != St::kAtBlock) continue;
      if (l.line != f.line || std::strcmp(l.file, f.file) != 0 || l.op != f.op) {
        record_failure(b, "threads wait at different __syncthreads: " + where(f.file, f.line) + " and " +
                              where(l.file, l.line) + " (a barrier inside a branch not every thread takes)");
        return false;
      }
      if (f.op == BlockOp::kOr) reduced |= l.value;
      if (f.op == BlockOp::kAnd) reduced &= l.value;
      if (f.op == BlockOp::kCount) reduced += l.value;
    }
    for (Lane& l : b.lanes)
      if (l.st == St::kAtBlock) {
        l.result = reduced;
        l.st = St::kRunnable;
      }
    released = true;
  }
  return released;
}

// Called when no thread can run: either a barrier opens or the block can never finish.
void release_or_deadlock(Block& b) {
  if (b.abort || try_release(b) || b.live == 0) return;
  for (const Lane& l : b.lanes)
    if (l.st == St::kRunnable) return;
  std::ostringstream os;
  os << "deadlock: no thread can go on;";
  int shown = 0;
  for (const Lane& l : b.lanes) {
    if (l.st == St::kExited || shown++ >= 4) continue;
    os << " thread " << l.ctx.linear << " waits at " << (l.st == St::kAtBlock ? "a block barrier " : "a warp barrier ")
       << where(l.file, l.line) << ";";
  }
  os << " (a barrier some threads of the block or warp never reach)";
  record_failure(b, os.str());
}

Lane& me() {
  if (t_lane == nullptr || g_block == nullptr) throw EmuError("a device function was called outside a kernel");
  return *t_lane;
}

// The calling thread records where and how it waits (`fill`) and comes back when that barrier opens.
template <typename Fill>
void arrive(Fill fill) {
  Lane& lane = me();
  Block& b = *g_block;
#if defined(EMU_THREADS)
  std::unique_lock<std::mutex> lock(b.mu);
  if (b.abort) throw Abort{};
  fill(lane);
  release_or_deadlock(b);
  b.cv.notify_all();
  b.cv.wait(lock, [&] { return lane.st == St::kRunnable || b.abort; });
  if (b.abort) throw Abort{};
#else
  fill(lane);
  swapcontext(&lane.uc, &b.sched);  // back in the scheduler until the barrier opens
  if (b.abort) throw Abort{};
#endif
}

// ---- running a block ------------------------------------------------------------------------------------
void run_body(Block& b, Lane& lane) {
  t_lane = &lane;
  try {
    (*b.body)();
    size_t pending = lane.uncommitted.size();
    for (const auto& g : lane.groups) pending += g.size();
    if (pending > 0)
      throw EmuError(std::to_string(pending) + " cp.async copies were never waited for (a missing "
                     "cp.async.wait_group before the thread exits)");
  } catch (const Abort&) {
  } catch (const std::exception& e) {
#if defined(EMU_THREADS)
    std::lock_guard<std::mutex> lock(b.mu);
#endif
    record_failure(b, std::string("thread (") + std::to_string(lane.ctx.thread_idx.x) + "," +
                          std::to_string(lane.ctx.thread_idx.y) + "," + std::to_string(lane.ctx.thread_idx.z) +
                          "): " + e.what());
  }
#if defined(EMU_THREADS)
  std::lock_guard<std::mutex> lock(b.mu);
  lane.st = St::kExited;
  --b.live;
  release_or_deadlock(b);
  b.cv.notify_all();
#else
  lane.st = St::kExited;
  --b.live;
#endif
  t_lane = nullptr;
}

#if defined(EMU_THREADS)
void run_threads(Block& b) {
  std::vector<std::thread> threads;
  threads.reserve(b.lanes.size());
  for (Lane& lane : b.lanes) threads.emplace_back([&b, &lane] { run_body(b, lane); });
  for (auto& t : threads) t.join();
}
#else
Lane* g_starting = nullptr;

void fiber_entry() {
  Lane* lane = g_starting;
  run_body(*g_block, *lane);
}  // returning resumes uc_link, the scheduler

std::vector<int> schedule_order(int n) {
  std::vector<int> order(n);
  for (int i = 0; i < n; ++i) order[i] = g_schedule == 1 ? i : n - 1 - i;
  if (g_schedule >= 2) std::shuffle(order.begin(), order.end(), std::mt19937(g_schedule));
  return order;
}

void run_fibers(Block& b) {
  for (Lane& lane : b.lanes) {
    if (lane.stack.base == nullptr) {
      void* p = mmap(nullptr, kFiberStack + kStackGuard, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) throw std::bad_alloc();
      mprotect(p, kStackGuard, PROT_NONE);  // stacks grow down: the guard is the lowest page
      lane.stack.base = p;
    }
    getcontext(&lane.uc);
    lane.uc.uc_stack.ss_sp = static_cast<char*>(lane.stack.base) + kStackGuard;
    lane.uc.uc_stack.ss_size = kFiberStack;
    lane.uc.uc_link = &b.sched;
    makecontext(&lane.uc, fiber_entry, 0);
  }
  const std::vector<int> order = schedule_order(static_cast<int>(b.lanes.size()));
  std::vector<bool> started(b.lanes.size(), false);
  auto resume = [&](int i) {
    Lane& lane = b.lanes[i];
    t_lane = &lane;
    if (!started[i]) {
      started[i] = true;
      g_starting = &lane;
    }
    swapcontext(&b.sched, &lane.uc);
    t_lane = nullptr;
  };
  // Always the first runnable thread of `order`: with the default order the highest warp runs ahead
  // to its next block barrier (its warp barriers open as soon as its own 32 lanes arrive) before lower
  // warps start, so a block barrier that is missing lets it read or overwrite what they have not
  // written or read yet.
  while (b.live > 0 && !b.abort) {
    int next = -1;
    for (int i : order)
      if (b.lanes[i].st == St::kRunnable) {
        next = i;
        break;
      }
    if (next >= 0) {
      resume(next);
      if (!b.abort) try_release(b);
    } else {
      release_or_deadlock(b);
    }
  }
  // After a failure every suspended thread is resumed once: its barrier call throws Abort and unwinds it.
  for (size_t i = 0; i < b.lanes.size(); ++i)
    if (b.lanes[i].st != St::kExited && started[i]) resume(static_cast<int>(i));
}
#endif

unsigned char* alloc_shared(size_t bytes) {
  void* p = nullptr;
  if (posix_memalign(&p, 128, bytes + kGuardBytes) != 0) throw std::bad_alloc();
  return static_cast<unsigned char*>(p);
}

void prefill(SharedPiece& piece) {
  std::memset(piece.data, kPrefillByte, piece.bytes);
  std::memset(piece.data + piece.bytes, kGuardByte, kGuardBytes);
}

bool guard_intact(const SharedPiece& piece) {
  for (size_t i = 0; i < kGuardBytes; ++i)
    if (piece.data[piece.bytes + i] != kGuardByte) return false;
  return true;
}

std::string block_name(const uint3& b) {
  return "block (" + std::to_string(b.x) + "," + std::to_string(b.y) + "," + std::to_string(b.z) + ")";
}

}  // namespace

// ---- the API the kernels see -----------------------------------------------------------------------------
ThreadCtx& ctx() { return me().ctx; }

void fail(const std::string& message) { throw EmuError(message); }

int block_barrier(BlockOp op, int value, const char* file, int line) {
  arrive([&](Lane& l) {
    l.st = St::kAtBlock;
    l.op = op;
    l.value = value;
    l.file = file;
    l.line = line;
  });
  return me().result;
}

void warp_gather_words(unsigned mask, const uint64_t* value, int words, uint64_t* out, const char* file,
                       int line) {
  Lane& lane = me();
  if (words < 1 || words > kMaxGatherWords) fail("warp_gather_words: 1 to kMaxGatherWords words per lane");
  if (!((mask >> lane.ctx.lane) & 1u))
    fail("lane " + std::to_string(lane.ctx.lane) + " calls a warp collective at " + where(file, line) +
         " whose mask does not include it");
  arrive([&](Lane& l) {
    l.st = St::kAtWarp;
    l.mask = mask;
    l.gather_words = words;
    std::memcpy(l.gather_value, value, sizeof(uint64_t) * words);
    l.file = file;
    l.line = line;
  });
  if (lane.gather_words != words)
    fail(std::string("lanes of a warp meet at ") + where(file, line) +
         " from different warp-wide operations (a collective some lanes skip)");
  std::memcpy(out, lane.gathered, sizeof(uint64_t) * 32 * words);
}

void warp_gather(unsigned mask, uint64_t value, uint64_t out[32], const char* file, int line) {
  warp_gather_words(mask, &value, 1, out, file, line);
}

void warp_barrier(unsigned mask, const char* file, int line) {
  uint64_t ignored[32];
  warp_gather(mask, 0, ignored, file, line);
}

void* dynamic_shared_base() {
  if (g_block == nullptr) fail("extern __shared__ memory used outside a kernel");
  return g_block->dynamic.data;  // with 0 bytes: a valid pointer to nothing (any access is past the end)
}

void* static_shared_base(int id, size_t bytes, size_t align) {
  Block& b = *g_block;
#if defined(EMU_THREADS)
  std::lock_guard<std::mutex> lock(b.mu);
#endif
  if (align > 128) fail("static __shared__ alignment above 128 bytes is not emulated");
  SharedPiece& piece = b.statics[id];
  if (piece.data == nullptr) {
    if (bytes > 48 * 1024) fail("static __shared__ memory above 48 KiB: the GPU refuses it");
    piece.data = alloc_shared(bytes);
    piece.bytes = bytes;
    prefill(piece);
  }
  return piece.data;
}

void check_shared_range(const void* p, size_t bytes, const char* what) {
  Block& b = *g_block;
  auto check = [&](const SharedPiece& piece, const char* kind) {
    const auto* c = static_cast<const unsigned char*>(p);
    if (piece.data == nullptr || c < piece.data || c >= piece.data + piece.bytes + kGuardBytes) return;
    if (c + bytes > piece.data + piece.bytes)
      fail(std::string(what) + " touches " + std::to_string(c + bytes - (piece.data + piece.bytes)) +
           " bytes past the end of the " + kind + " shared memory (" + std::to_string(piece.bytes) + " bytes)");
  };
  check(b.dynamic, "dynamic");
  for (const auto& kv : b.statics) check(kv.second, "static");
}

void warp_op_check(const uint64_t* all, int words, uint64_t tag, const char* op) {
  for (int l = 0; l < 32; ++l) {
    if (all[l * words] == tag) continue;
    fail(std::string(op) + ": lane " + std::to_string(l) +
         (all[l * words] == 0 ? " did not execute it (exited, or skipped it)"
                              : " executed a different warp-wide instruction with it (a different shape, type or "
                                "variant)") +
         "; all 32 lanes of the warp must execute the same .sync.aligned instruction");
  }
}

bool in_shared(const void* p, size_t bytes) {
  Block& b = *g_block;
  const auto* c = static_cast<const unsigned char*>(p);
  auto inside = [&](const SharedPiece& piece) {
    return piece.data != nullptr && c >= piece.data && c + bytes <= piece.data + piece.bytes;
  };
  if (inside(b.dynamic)) return true;
  for (const auto& kv : b.statics)
    if (inside(kv.second)) return true;
  return false;
}

// cp.async.cg.shared.global: the destination's contents are undefined from the issue until the
// cp.async.wait_group that retires the copy's group. The emulator makes that visible: the destination is
// filled with the NaN pattern at once, and the data lands only at the wait, so a read before the wait (or
// a copy issued into a buffer other threads still read) finds NaN.
void cp_async(void* dst, const void* src, int bytes, int src_bytes) {
  Lane& lane = me();
  const auto d = reinterpret_cast<uintptr_t>(dst), s = reinterpret_cast<uintptr_t>(src);
  if (bytes != 4 && bytes != 8 && bytes != 16) fail("cp.async copies 4, 8 or 16 bytes");
  if (src_bytes < 0 || src_bytes > bytes) fail("cp.async: src-size must be in [0, cp-size]");
  if (d % bytes != 0 || s % bytes != 0)
    fail("cp.async of " + std::to_string(bytes) + " bytes: the shared address (" + std::to_string(d % bytes) +
         " past alignment) and the global address (" + std::to_string(s % bytes) + " past alignment) must both be " +
         std::to_string(bytes) + "-byte aligned");
  if (!in_shared(dst, bytes)) fail("cp.async: the destination is not (entirely) in shared memory");
  if (in_shared(src, 1)) fail("cp.async.shared.global: the source is in shared memory, not global memory");
  AsyncCopy c;
  c.dst = static_cast<unsigned char*>(dst);
  c.bytes = bytes;
  std::memset(c.data, 0, sizeof(c.data));  // src-size < cp-size: the rest is zero-filled
  if (src_bytes > 0) std::memcpy(c.data, src, src_bytes);
  std::memset(dst, kPrefillByte, bytes);
  lane.uncommitted.push_back(c);
}

void cp_async_commit() {
  Lane& lane = me();
  lane.groups.push_back(std::move(lane.uncommitted));  // may be an empty group, as on the GPU
  lane.uncommitted.clear();
}

void cp_async_wait(int n) {
  Lane& lane = me();
  if (n < 0) fail("cp.async.wait_group: N must be >= 0");
  while (static_cast<int>(lane.groups.size()) > n) {
    for (const AsyncCopy& c : lane.groups.front()) std::memcpy(c.dst, c.data, c.bytes);
    lane.groups.pop_front();
  }
}

void wmma_check(const char* op, const void* p, unsigned ldm, int layout, size_t elem_size) {
  const auto addr = reinterpret_cast<uintptr_t>(p);
  if (ldm >= 32768 || (addr >> 48) != 0)
    fail(std::string(op) + ": ldm >= 32768 or a pointer above 2^48 is not emulated");
  uint64_t all[32];
  const uint64_t mine = addr | (static_cast<uint64_t>(ldm) << 48) | (static_cast<uint64_t>(layout) << 63);
  warp_gather(0xffffffffu, mine, all, op, 0);  // the _sync: every lane arrives first
  for (int l = 0; l < 32; ++l)
    if (all[l] != mine) fail(std::string(op) + ": the lanes of a warp pass different pointers, ldm or layouts");
  if (addr % 32 != 0) fail(std::string(op) + ": the pointer must be 256-bit (32-byte) aligned");
  if ((ldm * elem_size) % 16 != 0)
    fail(std::string(op) + ": ldm=" + std::to_string(ldm) + " must be a multiple of 16 bytes (" +
         std::to_string(16 / elem_size) + " elements)");
  if (ldm < 16) fail(std::string(op) + ": ldm=" + std::to_string(ldm) + " is smaller than the tile's 16 columns");
  check_shared_range(p, (15 * static_cast<size_t>(ldm) + 16) * elem_size, op);
}

cudaError_t func_set_attribute(const void* kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) {
    set_error(cudaErrorNotSupported, "cuda emulator: cudaFuncSetAttribute emulates only MaxDynamicSharedMemorySize");
    return cudaErrorNotSupported;
  }
  if (value < 0 || value > current_device().smem_optin) {
    set_error(cudaErrorInvalidValue, "cudaFuncSetAttribute: " + std::to_string(value) +
                                         " bytes of dynamic shared memory is above this device's opt-in limit of " +
                                         std::to_string(current_device().smem_optin));
    return cudaErrorInvalidValue;
  }
  g_max_dynamic_smem[{g_current, kernel}] = value;
  return cudaSuccess;
}

cudaError_t func_get_attributes(cudaFuncAttributes* attr, const void* kernel) {
  if (!image_runs_here()) {
    set_error(cudaErrorNoKernelImageForDevice, "no kernel image is available for execution on the device");
    return cudaErrorNoKernelImageForDevice;
  }
  attr->binaryVersion = attr->ptxVersion = 10 * current_device().major + current_device().minor;
  const auto it = g_max_dynamic_smem.find({g_current, kernel});
  attr->maxDynamicSharedSizeBytes = it == g_max_dynamic_smem.end() ? current_device().smem_per_block : it->second;
  attr->maxThreadsPerBlock = 1024;
  return cudaSuccess;
}

cudaError_t run_launch(const void* kernel, dim3 grid, dim3 block, size_t smem, const std::function<void()>& body) {
  if (g_block != nullptr) fail("a kernel launched another kernel (dynamic parallelism is not emulated)");
  const uint64_t threads = static_cast<uint64_t>(block.x) * block.y * block.z;
  if (threads == 0 || grid.x == 0 || grid.y == 0 || grid.z == 0 || threads > 1024 || block.x > 1024 ||
      block.y > 1024 || block.z > 64 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
    set_error(cudaErrorInvalidConfiguration, "invalid launch configuration: grid (" + std::to_string(grid.x) + "," +
                                                 std::to_string(grid.y) + "," + std::to_string(grid.z) + "), block (" +
                                                 std::to_string(block.x) + "," + std::to_string(block.y) + "," +
                                                 std::to_string(block.z) + ")");
    return cudaErrorInvalidConfiguration;
  }
  if (!image_runs_here()) {
    set_error(cudaErrorNoKernelImageForDevice, "no kernel image is available for execution on the device (sm_" +
                                                   std::to_string(current_device().major) +
                                                   std::to_string(current_device().minor) + ")");
    return cudaErrorNoKernelImageForDevice;
  }
  const auto it = g_max_dynamic_smem.find({g_current, kernel});
  const size_t allowed =
      it == g_max_dynamic_smem.end() ? current_device().smem_per_block : std::max<size_t>(it->second, 0);
  if (smem > static_cast<size_t>(current_device().smem_optin) ||
      (smem > allowed && smem > static_cast<size_t>(current_device().smem_per_block))) {
    set_error(cudaErrorInvalidValue, "launch asks for " + std::to_string(smem) +
                                         " bytes of dynamic shared memory, above the " + std::to_string(allowed) +
                                         " the kernel may use (above 48 KiB needs cudaFuncSetAttribute first)");
    return cudaErrorInvalidValue;
  }

  Block b;
  b.body = &body;
  b.lanes.resize(threads);
  b.n_warps = static_cast<int>((threads + 31) / 32);
  b.dynamic.data = alloc_shared(smem);
  b.dynamic.bytes = smem;
  struct Cleanup {
    Block& b;
    ~Cleanup() {
      std::free(b.dynamic.data);
      for (auto& kv : b.statics) std::free(kv.second.data);
      g_block = nullptr;
    }
  } cleanup{b};
  g_block = &b;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        const uint3 bidx{bx, by, bz};
        for (uint64_t t = 0; t < threads; ++t) {
          Lane& l = b.lanes[t];
          l.st = St::kRunnable;
          l.uncommitted.clear();
          l.groups.clear();
          l.ctx.thread_idx = uint3{static_cast<unsigned>(t % block.x), static_cast<unsigned>(t / block.x % block.y),
                                   static_cast<unsigned>(t / (static_cast<uint64_t>(block.x) * block.y))};
          l.ctx.block_idx = bidx;
          l.ctx.block_dim = block;
          l.ctx.grid_dim = grid;
          l.ctx.linear = static_cast<int>(t);
          l.ctx.lane = static_cast<int>(t % 32);
          l.ctx.warp = static_cast<int>(t / 32);
        }
        b.live = static_cast<int>(threads);
        prefill(b.dynamic);
        for (auto& kv : b.statics) prefill(kv.second);
#if defined(EMU_THREADS)
        run_threads(b);
#else
        run_fibers(b);
#endif
        bool intact = guard_intact(b.dynamic);
        for (const auto& kv : b.statics) intact = intact && guard_intact(kv.second);
        if (!intact && b.error.empty()) b.error = "a thread wrote past the end of shared memory";
        if (!b.error.empty()) {
          set_error(cudaErrorLaunchFailure, block_name(bidx) + ", " + b.error);
          return cudaErrorLaunchFailure;
        }
      }
  return cudaSuccess;
}

}  // namespace emu

// ---- runtime calls ---------------------------------------------------------------------------------------
cudaError_t cudaGetLastError() {
  const cudaError_t err = emu::g_last_error;
  emu::g_last_error = cudaSuccess;
  return err;
}
cudaError_t cudaPeekAtLastError() { return emu::g_last_error; }

const char* cudaGetErrorString(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDeviceFunction: return "invalid device function";
    case cudaErrorNoKernelImageForDevice: return "no kernel image is available for execution on the device";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorIllegalInstruction: return "an illegal instruction was encountered";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorNotSupported: return "operation not supported";
  }
  return "unknown error";
}

cudaError_t cudaGetDevice(int* device) {
  *device = emu::g_current;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device < 0 || device >= static_cast<int>(emu::g_devices.size())) return cudaErrorInvalidValue;
  const emu::Device& d = emu::g_devices[device];
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = d.smem_per_block; return cudaSuccess;
    case cudaDevAttrMultiProcessorCount: *value = 4; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *value = d.major; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *value = d.minor; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = d.smem_optin; return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}

// ---- the C interface of the Python driver -----------------------------------------------------------------
extern "C" {

// images: "80;90;90+PTX" style: machine code for sm_80 and sm_90, PTX for compute_90.
// Makes the described device current (cudaGetDevice); returns its index.
int emu_set_device(int major, int minor, int smem_optin, const char* images) {
  emu::Device d;
  d.major = major;
  d.minor = minor;
  d.smem_optin = smem_optin;
  d.images.clear();
  std::stringstream ss(images);
  std::string item;
  while (std::getline(ss, item, ';')) {
    if (item.empty()) continue;
    const bool ptx = item.size() > 4 && item.substr(item.size() - 4) == "+PTX";
    d.images.push_back({std::atoi(item.c_str()), ptx});
  }
  for (size_t i = 0; i < emu::g_devices.size(); ++i) {
    const emu::Device& o = emu::g_devices[i];
    bool same = o.major == d.major && o.minor == d.minor && o.smem_optin == d.smem_optin &&
                o.images.size() == d.images.size();
    for (size_t j = 0; same && j < d.images.size(); ++j)
      same = o.images[j].arch == d.images[j].arch && o.images[j].ptx == d.images[j].ptx;
    if (same) return emu::g_current = static_cast<int>(i);
  }
  emu::g_devices.push_back(d);
  return emu::g_current = static_cast<int>(emu::g_devices.size() - 1);
}

void emu_set_schedule(int schedule) { emu::g_schedule = schedule; }

const char* emu_last_error_message() { return emu::g_last_message.c_str(); }

void emu_clear_error() {
  emu::g_last_error = cudaSuccess;
  emu::g_last_message.clear();
}
}
