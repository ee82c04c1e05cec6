// launch.h: a launch from start to end (workers, their stacks and shared memory, the blocks), the
// module's entry points that the generated tail of every module fills in, and what it exports.
#pragma once

namespace gpt2cpu {

// ---------------------------------------------------------------------------------------------
// A worker's memory: fiber stacks with guard pages, and its shared memory slots
// ---------------------------------------------------------------------------------------------
static bool worker_init(Worker* w, int nthreads) {
    for (int i = 0; i < nthreads; i++) {
        size_t k = (size_t)w->id * nthreads + i;
        char* base = g_pool + kRegion * k;
        if (!g_pool_guarded) mprotect(base, kPage, PROT_NONE);  // guard page below the stack
        w->block.fibers[i] = &g_desc[k];
        w->block.fibers[i]->stack_lo = base;
    }
    w->block.worker = w;
    w->block.seq = 0;
    return shared_init_worker(w, g_launch->shared_mem);
}

static uint64_t gcd64(uint64_t a, uint64_t b) { while (b) { uint64_t t = a % b; a = b; b = t; } return a; }

static int launch_error(const char* message) {
    snprintf(g_report->message, sizeof g_report->message, "%s", message);
    g_report->status = RUNTIME_ERROR;
    return 2;
}

static int run_launch(LaunchConfig* L, char* arena) {
    g_launch = L;
    g_arena = arena;
    g_report = (Report*)arena;
    g_printf = arena + kPrintfOffset;
    g_grid = dim3(L->grid[0], L->grid[1], L->grid[2]);
    g_block = dim3(L->block[0], L->block[1], L->block[2]);
    g_nblocks = (uint64_t)g_grid.x * g_grid.y * g_grid.z;
    g_next_block = 0;
    g_failed = 0;
    g_perm_a = 1; g_perm_c = 0;
    if ((L->schedule & ORDER_MASK) == RANDOM && g_nblocks > 1) {
        uint64_t s = mix64(L->seed + 12345);
        g_perm_a = 2 * (s % g_nblocks) + 1;
        while (gcd64(g_perm_a % g_nblocks, g_nblocks) != 1) g_perm_a += 2;
        g_perm_c = mix64(s) % g_nblocks;
    }
    Dl_info info;
    if (dladdr((void*)&run_launch, &info)) g_module_base = (uint64_t)info.dli_fbase;
    if (const char* why = map_windows(L, arena)) return launch_error(why);
    g_report->windows_base = (uint64_t)g_windows_base;
    g_report->window_shift = g_window_shift;
    // the kernel's arguments: pointers into the windows, scalars as given
    static void* values[kMaxParams];
    static uint64_t storage[kMaxParams][2];
    ArgSlot* slots = (ArgSlot*)(arena + kArgsOffset);
    for (int i = 0; i < L->nargs; i++) {
        if (slots[i].is_pointer) {
            void* p = slots[i].window < 0 ? nullptr : g_data_start[slots[i].window] + slots[i].offset;
            memcpy(storage[i], &p, sizeof p);
        } else {
            memcpy(storage[i], slots[i].bytes, slots[i].size);
        }
        values[i] = storage[i];
    }
    g_launch_args = values;
    if (const char* why = globals_in(L, arena)) return launch_error(why);
    if (L->track_writes && !tracking_init(L)) return launch_error("could not allocate racecheck's write tracking");

    int nthreads = (int)(g_block.x * g_block.y * g_block.z);
    int nworkers = L->workers < 1 ? 1 : L->workers;
    if (L->track_writes) nworkers = 1;
    if ((uint64_t)nworkers > g_nblocks) nworkers = (int)g_nblocks;
    if (nworkers > 256) nworkers = 256;
    g_nworkers = nworkers;
    Worker* workers = (Worker*)calloc((size_t)nworkers, sizeof(Worker));
    int nfib = L->plain ? 1 : nthreads;
    g_pool_regions = (size_t)nworkers * nfib;
    // The caller's pool persists across launches: its stacks are already mapped and guarded, which
    // saves a fresh child hundreds of page faults and mprotect calls per launch.
    bool own_pool = !(L->pool && L->pool_regions >= g_pool_regions);
    g_pool = own_pool ? (char*)mmap(nullptr, kRegion * g_pool_regions, PROT_READ | PROT_WRITE,
                                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
                      : L->pool;
    g_pool_guarded = !own_pool;
    g_desc = (Fiber*)calloc(g_pool_regions, sizeof(Fiber));
    g_shared_bytes = kSharedSpan * (size_t)nworkers;
    g_shared_base = (char*)mmap(nullptr, g_shared_bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (!workers || g_pool == MAP_FAILED || !g_desc || g_shared_base == MAP_FAILED)
        return launch_error("could not map fiber stacks or shared memory (out of memory?)");
    for (int i = 0; i < nworkers; i++) {
        workers[i].id = i;
        workers[i].altstack = (char*)malloc(64 << 10);
        g_workers[i] = &workers[i];
        if (!worker_init(&workers[i], nfib)) return launch_error("could not map a worker's shared memory");
    }
    for (int i = 1; i < nworkers; i++) pthread_create(&workers[i].thread, nullptr, worker_main, &workers[i]);
    worker_main(&workers[0]);
    for (int i = 1; i < nworkers; i++) pthread_join(workers[i].thread, nullptr);
    uint64_t sw = 0;
    for (int i = 0; i < nworkers; i++) sw += workers[i].switches;
    g_report->switches = sw;
    int rc = g_failed ? 2 : 0;
    if (rc == 0) globals_out(L, arena);
    if (own_pool) munmap(g_pool, kRegion * g_pool_regions);
    munmap(g_shared_base, g_shared_bytes);
    free(g_desc);
    for (int i = 0; i < nworkers; i++) {
        free(workers[i].altstack);
        g_workers[i] = nullptr;
    }
    free(workers);
    g_nworkers = 0;
    return rc;
}

// ---------------------------------------------------------------------------------------------
// Entry points: the generated tail of a module defines one EntryFn per kernel (instantiation).
// ---------------------------------------------------------------------------------------------
template <class T> struct type_name { static const char* get() { return "?"; } };
#define GPT2CPU_TYPE_NAME(T, S) template <> struct type_name<T> { static const char* get() { return S; } };
GPT2CPU_TYPE_NAME(float, "float") GPT2CPU_TYPE_NAME(double, "double") GPT2CPU_TYPE_NAME(int, "int")
GPT2CPU_TYPE_NAME(unsigned int, "unsigned int") GPT2CPU_TYPE_NAME(long, "long")
GPT2CPU_TYPE_NAME(unsigned long, "unsigned long") GPT2CPU_TYPE_NAME(long long, "long long")
GPT2CPU_TYPE_NAME(unsigned long long, "unsigned long long") GPT2CPU_TYPE_NAME(short, "short")
GPT2CPU_TYPE_NAME(unsigned short, "unsigned short") GPT2CPU_TYPE_NAME(char, "char")
GPT2CPU_TYPE_NAME(signed char, "signed char") GPT2CPU_TYPE_NAME(unsigned char, "unsigned char")
GPT2CPU_TYPE_NAME(bool, "bool")
GPT2CPU_TYPE_NAME(void, "void")
#define GPT2CPU_VECTOR_NAMES(P) GPT2CPU_TYPE_NAME(P##1, #P "1") GPT2CPU_TYPE_NAME(P##2, #P "2") \
    GPT2CPU_TYPE_NAME(P##3, #P "3") GPT2CPU_TYPE_NAME(P##4, #P "4")
GPT2CPU_VECTOR_NAMES(char) GPT2CPU_VECTOR_NAMES(uchar) GPT2CPU_VECTOR_NAMES(short) GPT2CPU_VECTOR_NAMES(ushort)
GPT2CPU_VECTOR_NAMES(int) GPT2CPU_VECTOR_NAMES(uint) GPT2CPU_VECTOR_NAMES(long) GPT2CPU_VECTOR_NAMES(ulong)
GPT2CPU_VECTOR_NAMES(longlong) GPT2CPU_VECTOR_NAMES(ulonglong) GPT2CPU_VECTOR_NAMES(float) GPT2CPU_VECTOR_NAMES(double)
#undef GPT2CPU_VECTOR_NAMES
#undef GPT2CPU_TYPE_NAME

template <class T> struct describe {
    static void put(char* out, size_t cap) { strncat(out, type_name<T>::get(), cap - strlen(out) - 1); }
};
template <class T> struct describe<T*> {
    static void put(char* out, size_t cap) {
        if (std::is_const<T>::value) strncat(out, "const ", cap - strlen(out) - 1);
        describe<typename std::remove_cv<T>::type>::put(out, cap);
        strncat(out, "*", cap - strlen(out) - 1);
    }
};

template <class... A> static const char* signature_of(void (*)(A...)) {
    static char buf[1 << 16];
    buf[0] = 0;
    int i = 0;
    ((i++ ? strncat(buf, ",", sizeof buf - strlen(buf) - 1) : buf, describe<A>::put(buf, sizeof buf)), ...);
    (void)i;
    return buf;
}

template <class... A, size_t... I>
static inline void invoke_impl(void (*fn)(A...), void** args, std::index_sequence<I...>) {
    fn(*static_cast<typename std::remove_cv<A>::type*>(args[I])...);
}
template <class... A> static inline void invoke(void (*fn)(A...), void** args) {
    invoke_impl(fn, args, std::index_sequence_for<A...>{});
}
}  // namespace gpt2cpu

GPT2CPU_EXPORT int gpt2cpu_entry_count() { return gpt2cpu::entry_count; }
GPT2CPU_EXPORT const char* gpt2cpu_entry_name(int i) { return gpt2cpu::entry_names[i]; }
GPT2CPU_EXPORT int gpt2cpu_sizeof_report() { return (int)sizeof(gpt2cpu::Report); }
GPT2CPU_EXPORT int gpt2cpu_sizeof_config() { return (int)sizeof(gpt2cpu::LaunchConfig); }
GPT2CPU_EXPORT int gpt2cpu_sizeof_window() { return (int)sizeof(gpt2cpu::Window); }
GPT2CPU_EXPORT int gpt2cpu_sizeof_arg() { return (int)sizeof(gpt2cpu::ArgSlot); }
GPT2CPU_EXPORT int gpt2cpu_global_count() { return gpt2cpu::module_global_count; }
GPT2CPU_EXPORT const char* gpt2cpu_global_name(int i) { return gpt2cpu::module_globals[i].name; }
GPT2CPU_EXPORT void* gpt2cpu_global_address(int i) { return gpt2cpu::module_globals[i].addr; }
GPT2CPU_EXPORT uint64_t gpt2cpu_global_bytes(int i) { return gpt2cpu::module_globals[i].bytes; }

// Run a launch on `arena` (the caller's mapping of it).
// isolate=0: here, in the calling thread (returns 0, or 2 on a runtime error; a memory fault kills
// the process, so that mode is for benchmarks of trusted kernels only).
// isolate=1: in a forked child (returns its pid, or -errno; the caller waits for it and reads the report).
// isolate=2: the caller is already a disposable child (the launcher's): run with fault handlers and
// exit with the result.
[[noreturn]] static void gpt2cpu_run_as_child(gpt2cpu::LaunchConfig* L, char* arena) {
    using namespace gpt2cpu;
#if defined(__linux__)
    prctl(PR_SET_PDEATHSIG, SIGKILL);
#endif
    g_isolated = true;
    g_report = (Report*)arena;
    install_fault_handlers();
    _exit(run_launch(L, arena));
}

GPT2CPU_EXPORT long gpt2cpu_launch(gpt2cpu::LaunchConfig* L, char* arena, int isolate) {
    using namespace gpt2cpu;
    if (isolate == 0) {
        g_isolated = false;
        L->arena_fd = -1;
        return run_launch(L, arena);
    }
    if (isolate == 2) gpt2cpu_run_as_child(L, arena);
    pid_t pid = fork();
    if (pid < 0) return -errno;
    if (pid == 0) gpt2cpu_run_as_child(L, arena);
    return pid;
}
