// memory.h: where a launch's memory lives, so that every wrong access is caught.
//
// - Argument windows. Each array argument is mapped (from the arena file Python filled) into the
//   middle of a window of inaccessible address space of its own, 64 GiB to 1 TiB wide, its last
//   element against the end of its last page: a read or write one element past the end faults, and
//   so does any access through a 32-bit index, which can reach at most 8 GiB (times the element
//   size) away. The Python side turns the faulting address into the argument and the element.
// - Shared memory. Slot 0 of a worker's shared memory holds the block's dynamic shared memory, slot
//   `id` the `__shared__` variable the rewrite numbered `id`: each against the end of its pages, in
//   a MiB of otherwise inaccessible address space. Variables are poisoned with 0xff bytes (NaN as
//   float) for every block, and the bytes in front of them are checked after each block.
// - Vector alignment. A float4 (or any 2- or 4-component vector) access must sit at a multiple of
//   its size from the start of its allocation, as on a GPU (types.h routes every copy here).
// - Write tracking (racecheck). One worker runs the blocks one at a time; before each block every
//   writable window is made read-only, the first write to a page saves a copy of it and opens it,
//   and after the block the changed bytes are compared with what earlier blocks wrote: a byte
//   written by two blocks, outside atomics, is a race between blocks.
// - Module globals (`__device__` variables) are copied from the arena before the launch and back
//   after it, so that they live as long as the module, as on a GPU.
#pragma once

namespace gpt2cpu {

[[noreturn]] static void runtime_error(Fiber* f, const char* fmt, ...);
static void report_error(Worker* w, const char* fmt, ...);
static bool claim_report(int32_t status);
[[noreturn]] static void address_fault(Fiber* f, FaultKind kind, const void* addr, int write, const char* detail,
                                       int vector_bytes);

// ---------------------------------------------------------------------------------------------
// Argument windows
// ---------------------------------------------------------------------------------------------
static char* g_windows_base;        // null: no windows (in-process launches use the caller's pointers)
static uint64_t g_window_shift;
static uint64_t g_windows_bytes;    // nwindows << shift (0 without windows: every range test fails)
static char* g_data_start[kMaxWindows];
static char* g_align_origin[kMaxWindows];  // alignment is measured from here: as at the caller's address
static Window* g_window_table;      // the arena's table

// Map each window's pages into its own stretch of inaccessible address space. Returns null, or why not.
static const char* map_windows(LaunchConfig* L, char* arena) {
    g_window_table = (Window*)(arena + kWindowsOffset);
    if (L->nwindows <= 0) return nullptr;
    if (L->arena_fd < 0) {  // in-process: the arrays stay where the caller put them
        for (int w = 0; w < L->nwindows; w++) {
            g_data_start[w] = arena + g_window_table[w].arena_offset + g_window_table[w].data_offset;
            g_align_origin[w] = g_data_start[w] - g_window_table[w].align_phase;
        }
        return nullptr;
    }
    uint64_t shift = kMaxWindowShift;
    while (shift > kMinWindowShift && ((uint64_t)L->nwindows << shift) > (uint64_t)kWindowSpace) shift--;
    void* base = MAP_FAILED;
    for (; shift >= kMinWindowShift - 2; shift--) {  // a smaller reservation where the system refuses this one
        base = mmap(nullptr, (size_t)L->nwindows << shift, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                    -1, 0);
        if (base != MAP_FAILED) break;
    }
    if (base == MAP_FAILED) return "could not reserve address space for the arguments' guard windows";
    g_windows_base = (char*)base;
    g_window_shift = shift;
    g_windows_bytes = (uint64_t)L->nwindows << shift;
    // Each array in the middle of its window, moved by a random number of pages (up to an eighth of the
    // window either way), so that no fixed distance leads from one array into another: a wild pointer
    // lands in a guard, not in another argument.
    uint64_t jitter = (uint64_t)time(nullptr) ^ ((uint64_t)getpid() << 20) ^ (uint64_t)(uintptr_t)base;
    for (int w = 0; w < L->nwindows; w++) {
        Window& win = g_window_table[w];
        jitter = jitter * 6364136223846793005ULL + 1442695040888963407ULL;
        uint64_t eighth = 1ull << (shift - 3), pages = eighth / kPage;
        int64_t shift_by = (int64_t)((jitter >> 17) % (2 * pages)) - (int64_t)pages;
        char* body = g_windows_base + ((uint64_t)w << shift) + (1ull << (shift - 1)) + shift_by * (int64_t)kPage;
        if (win.body_bytes > eighth) body -= win.body_bytes;  // (a huge array stays inside its window)
        int prot = PROT_READ | (win.writable ? PROT_WRITE : 0);
        if (win.body_bytes &&
            mmap(body, win.body_bytes, prot, MAP_SHARED | MAP_FIXED, L->arena_fd, (off_t)win.arena_offset) == MAP_FAILED)
            return "could not map an argument into its window";
        g_data_start[w] = body + win.data_offset;
        g_align_origin[w] = g_data_start[w] - win.align_phase;
        win.mapped_data = (uint64_t)g_data_start[w];
    }
    return nullptr;
}

static inline int window_of(const void* p) {
    uintptr_t off = (uintptr_t)p - (uintptr_t)g_windows_base;
    return off < g_windows_bytes ? (int)(off >> g_window_shift) : -1;
}

// ---------------------------------------------------------------------------------------------
// Shared memory
// ---------------------------------------------------------------------------------------------
static constexpr size_t kSharedSpan = (size_t)(kMaxSharedSites + 1) * kSharedSlot;  // one worker's
static char* g_shared_base;         // all workers' shared memory, kSharedSpan each
static size_t g_shared_bytes;

static inline size_t round_pages(size_t n) { return (n + kPage - 1) / kPage * kPage; }

// Give slot `id` of worker w `bytes` of accessible memory ending at a page end; returns its start.
static char* open_shared_slot(Worker* w, int id, size_t bytes) {
    char* slot = w->shared.base + (size_t)id * kSharedSlot;
    size_t pages = round_pages(bytes ? bytes : 1);
    if (pages > (size_t)kSharedSlot / 2) return nullptr;
    mprotect(slot, pages, PROT_READ | PROT_WRITE);
    memset(slot, 0xff, pages);  // the bytes in front are a canary, the variable is poisoned per block
    return slot + pages - bytes;
}

static bool shared_init_worker(Worker* w, size_t dynamic_bytes) {
    SharedMemory& s = w->shared;
    memset(&s, 0, sizeof s);
    s.base = g_shared_base + (size_t)w->id * kSharedSpan;
    s.start[0] = open_shared_slot(w, 0, dynamic_bytes);
    if (!s.start[0]) return false;
    s.bytes[0] = dynamic_bytes;
    s.element[0] = 1;
    s.name[0] = "";
    return true;
}

static void block_shared_begin(Worker* w) {
    SharedMemory& s = w->shared;
    memset(s.start[0], 0xff, s.bytes[0]);  // poison: uninitialised reads show up as NaN
}

// `__shared__ T name[N];` is rewritten to `auto& name = __gpt2cpu_shared_var<T[N]>(id, "T name[N]");`:
// the first thread of a block to reach the declaration poisons the variable; all find it by id.
template <class T> static inline T& shared_var(int id, const char* declaration) {
    Fiber* f = self();
    Worker* w = f->block->worker;
    SharedMemory& s = w->shared;
    if (id < 1 || id > kMaxSharedSites)
        runtime_error(f, "a module may declare at most %d __shared__ variables", kMaxSharedSites);
    char* p = s.start[id];
    if (!p) {
        size_t align = alignof(T) < 16 ? 16 : alignof(T);
        size_t used = (s.static_used + align - 1) / align * align + sizeof(T);
        if (used + s.bytes[0] > (size_t)kStaticSharedCap)
            runtime_error(f,
                "block uses more shared memory than the 48 KiB a block may use: %zu bytes of __shared__ "
                "variables plus %zu bytes of dynamic shared memory", used, s.bytes[0]);
        p = open_shared_slot(w, id, sizeof(T));
        if (!p) runtime_error(f, "internal: a __shared__ variable larger than its slot");
        s.static_used = used;
        s.start[id] = p;
        s.bytes[id] = sizeof(T);
        s.element[id] = sizeof(typename std::remove_all_extents<T>::type);
        s.name[id] = declaration;
    }
    if (s.poisoned_in[id] != f->block->seq) {
        memset((void*)p, 0xff, sizeof(T));
        s.poisoned_in[id] = f->block->seq;
    }
    return *reinterpret_cast<T*>(p);
}

// After a block: the bytes in front of each variable must still be the canary.
static void block_shared_end(Worker* w) {
    SharedMemory& s = w->shared;
    const uint3 b = w->block.block_idx;
    for (int id = 0; id <= kMaxSharedSites; id++) {
        if (!s.start[id]) continue;
        char* slot = s.base + (size_t)id * kSharedSlot;
        for (char* c = slot; c < s.start[id]; c++) {
            if ((unsigned char)*c == 0xff) continue;
            if (id == 0)
                report_error(w, "out-of-bounds write before the start of dynamic shared memory (%td bytes before "
                             "it) in block (%u,%u,%u); found after the block ran, so the thread is unknown",
                             s.start[id] - c, b.x, b.y, b.z);
            else
                report_error(w, "out-of-bounds write before the start of shared memory (__shared__ %s, %td bytes "
                             "before it) in block (%u,%u,%u); found after the block ran, so the thread is unknown",
                             s.name[id], s.start[id] - c, b.x, b.y, b.z);
            return;
        }
    }
}

static inline int shared_slot_of(const void* p, Worker** worker) {
    uintptr_t off = (uintptr_t)p - (uintptr_t)g_shared_base;
    if (off >= g_shared_bytes) return -1;
    *worker = g_workers[off / kSharedSpan];
    return (int)((off % kSharedSpan) / kSharedSlot);
}

// The message of an access at `addr` in shared memory (for the fault handler).
static void describe_shared_fault(char* out, size_t cap, const void* addr, int access) {
    Worker* w = nullptr;
    int id = shared_slot_of(addr, &w);
    const char* what = access == 1 ? "write" : access == 0 ? "read" : "access";
    if (id < 0 || !w) { snprintf(out, cap, "out-of-bounds %s of shared memory", what); return; }
    SharedMemory& s = w->shared;
    long long off = (long long)((const char*)addr - s.start[id]);
    if (id == 0) {
        snprintf(out, cap, "out-of-bounds %s of dynamic shared memory: byte %lld of the %zu bytes given at launch "
                 "(shared_mem=%zu)", what, off, s.bytes[0], s.bytes[0]);
        return;
    }
    if (!s.start[id]) { snprintf(out, cap, "out-of-bounds %s of shared memory", what); return; }
    long long elem = off >= 0 ? off / (long long)s.element[id] : -((-off + (long long)s.element[id] - 1) /
                                                                    (long long)s.element[id]);
    size_t count = s.bytes[id] / s.element[id];
    // the declaration reads "T name[N]": say "an array of N T elements"
    char type[64] = "";
    const char* decl = s.name[id];
    const char* space = strrchr(decl, ' ');
    const char* bracket = strchr(decl, '[');
    if (space && (!bracket || space < bracket)) snprintf(type, sizeof type, "%.*s", (int)(space - decl), decl);
    char name[64] = "";
    const char* n0 = space ? space + 1 : decl;
    snprintf(name, sizeof name, "%.*s", (int)(bracket ? bracket - n0 : (long)strlen(n0)), n0);
    snprintf(out, cap, "out-of-bounds %s of shared memory `%s`: element %lld of an array of %zu %s elements "
             "(__shared__ %s)", what, name, elem, count, type, decl);
}

// ---------------------------------------------------------------------------------------------
// Vector alignment, measured from the start of the allocation as on a GPU
// ---------------------------------------------------------------------------------------------
static inline void check_vector_access(const void* p, size_t align, const char* type, int write) {
    uintptr_t a = (uintptr_t)p, rel;
    int w = window_of(p);
    if (w >= 0) {
        rel = a - (uintptr_t)g_align_origin[w];
    } else {
        Worker* wk = nullptr;
        int id = shared_slot_of(p, &wk);
        if (id < 0 || !wk || !wk->shared.start[id]) return;  // the stack and other memory: not checked
        rel = a - (uintptr_t)wk->shared.start[id];
    }
    if (rel & (align - 1)) address_fault(self(), FAULT_MISALIGNED, p, write, type, (int)align);
}

// ---------------------------------------------------------------------------------------------
// Write tracking for racecheck: which block wrote which byte of the writable arguments
// ---------------------------------------------------------------------------------------------
static constexpr uint32_t kAtomicOwner = 0xffffffffu;
struct Tracking {
    uint32_t* owner[kMaxWindows];  // per byte of each writable window's pages: block + 1, or kAtomicOwner
    char* pre;                     // copies of the pages the current block opened, in order
    char** dirty;
    size_t ndirty, capacity;       // pages
    uintptr_t* atomics;            // addresses atomics wrote in the current block
    size_t natomics, atomics_cap;
    bool active;                   // inside a block (the fault handler may open pages)
};
static Tracking g_track;

static bool tracking_init(LaunchConfig* L) {
    size_t pages = 0;
    for (int w = 0; w < L->nwindows; w++) {
        if (!g_window_table[w].writable) continue;
        g_track.owner[w] = (uint32_t*)calloc(g_window_table[w].body_bytes, sizeof(uint32_t));
        if (!g_track.owner[w]) return false;
        pages += g_window_table[w].body_bytes / kPage;
    }
    g_track.capacity = pages;
    g_track.pre = (char*)malloc((pages ? pages : 1) * kPage);
    g_track.dirty = (char**)malloc((pages ? pages : 1) * sizeof(char*));
    g_track.atomics_cap = 1 << 16;
    g_track.atomics = (uintptr_t*)malloc(g_track.atomics_cap * sizeof(uintptr_t));
    return g_track.pre && g_track.dirty && g_track.atomics;
}

static inline char* window_body(int w) { return g_data_start[w] - g_window_table[w].data_offset; }

static void tracking_block_begin(uint64_t) {
    for (int w = 0; w < g_launch->nwindows; w++)
        if (g_window_table[w].writable && g_window_table[w].body_bytes)
            mprotect(window_body(w), g_window_table[w].body_bytes, PROT_READ);
    g_track.ndirty = 0;
    g_track.natomics = 0;
    g_track.active = true;
}

// From the fault handler: a write to a writable argument's page the current block has not opened yet.
static bool tracking_open_page(void* addr) {
    if (!g_track.active) return false;
    int w = window_of(addr);
    if (w < 0 || !g_window_table[w].writable) return false;
    char* body = window_body(w);
    char* page = (char*)((uintptr_t)addr & ~(uintptr_t)(kPage - 1));
    if (page < body || page >= body + g_window_table[w].body_bytes || g_track.ndirty >= g_track.capacity) return false;
    memcpy(g_track.pre + g_track.ndirty * kPage, page, kPage);
    g_track.dirty[g_track.ndirty++] = page;
    mprotect(page, kPage, PROT_READ | PROT_WRITE);
    return true;
}

static inline void tracking_atomic(const void* p) {
    if (!g_track.active) return;
    if (g_track.natomics == g_track.atomics_cap) {
        g_track.atomics_cap *= 2;
        g_track.atomics = (uintptr_t*)realloc(g_track.atomics, g_track.atomics_cap * sizeof(uintptr_t));
    }
    g_track.atomics[g_track.natomics++] = (uintptr_t)p;
}

static void tracking_block_end(Worker* wk, uint64_t linear) {
    g_track.active = false;
    for (size_t k = 0; k < g_track.natomics; k++) {
        int w = window_of((void*)g_track.atomics[k]);
        if (w < 0 || !g_track.owner[w]) continue;
        size_t at = (char*)g_track.atomics[k] - window_body(w);
        for (size_t b = 0; b < 8 && at + b < g_window_table[w].body_bytes; b++) g_track.owner[w][at + b] = kAtomicOwner;
    }
    uint32_t me = (uint32_t)(linear + 1);
    for (size_t k = 0; k < g_track.ndirty; k++) {
        char* page = g_track.dirty[k];
        const char* before = g_track.pre + k * kPage;
        int w = window_of(page);
        uint32_t* owner = g_track.owner[w] + (page - window_body(w));
        for (size_t i = 0; i < kPage; i++) {
            if (page[i] == before[i]) continue;
            uint32_t o = owner[i];
            if (o == 0 || o == me) { owner[i] = me; continue; }
            if (o == kAtomicOwner) continue;
            if (claim_report(RACE)) {
                Report* r = g_report;
                r->addr = (uint64_t)(page + i);
                r->race_blocks[0] = o - 1;
                r->race_blocks[1] = linear;
            }
            g_failed = 1;
            wk->failed = true;
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Module globals (`__device__` variables)
// ---------------------------------------------------------------------------------------------
struct ModuleGlobal { const char* name; void* addr; size_t bytes; };
extern const ModuleGlobal module_globals[];
extern const int module_global_count;

static const char* globals_in(LaunchConfig* L, char* arena) {
    if (L->nglobals == 0) return nullptr;
    if (L->nglobals != module_global_count) return "the module's __device__ variables do not match the caller's";
    GlobalSlot* slots = (GlobalSlot*)(arena + kGlobalsOffset);
    for (int i = 0; i < module_global_count; i++) {
        if (slots[i].bytes != module_globals[i].bytes) return "a __device__ variable's size does not match";
        memcpy(module_globals[i].addr, arena + slots[i].arena_offset, slots[i].bytes);
    }
    return nullptr;
}

static void globals_out(LaunchConfig* L, char* arena) {
    GlobalSlot* slots = (GlobalSlot*)(arena + kGlobalsOffset);
    for (int i = 0; i < L->nglobals && i < module_global_count; i++)
        memcpy(arena + slots[i].arena_offset, module_globals[i].addr, slots[i].bytes);
}

}  // namespace gpt2cpu
