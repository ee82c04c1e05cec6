// A C++ driver for tests/test_aarch64.py: runs kernels of tests/kernels/features.cu through the
// CPU backend's launch entry point (in-process and forked, all three schedules) and checks them.
// Compiled for aarch64 after the module source that helpers.runtime.cpu_backend generates, run under qemu.
// It lays out an arena as helpers/runtime/cpu_backend/arena.py does (gpt2cpu/abi.h): header tables, then
// the arrays; with arena_fd = -1 the launch uses them where they are.
#undef printf
#include <cstdio>
#include <sys/wait.h>
using namespace gpt2cpu;
static char* g_test_arena;
static size_t g_test_top;
// An array in the arena; returns its window index.
static int put(const void* data, size_t bytes, int writable, int window) {
    Window* w = (Window*)(g_test_arena + kWindowsOffset) + window;
    size_t pages = (bytes + 4095) / 4096 * 4096;
    w->arena_offset = g_test_top; w->body_bytes = pages; w->data_offset = pages - bytes; w->data_bytes = bytes;
    w->writable = writable; w->align_phase = 0;
    if (data) memcpy(g_test_arena + g_test_top + pages - bytes, data, bytes);
    g_test_top += pages;
    return window;
}
static float* at(int window) {
    Window* w = (Window*)(g_test_arena + kWindowsOffset) + window;
    return (float*)(g_test_arena + w->arena_offset + w->data_offset);
}
static void pointer_arg(int i, int window) {
    ArgSlot* a = (ArgSlot*)(g_test_arena + kArgsOffset) + i;
    a->is_pointer = 1; a->window = window; a->offset = 0;
}
static void int_arg(int i, int v) {
    ArgSlot* a = (ArgSlot*)(g_test_arena + kArgsOffset) + i;
    a->is_pointer = 0; a->window = -1; a->size = 4; memcpy(a->bytes, &v, 4);
}
static int run(LaunchConfig* L, int isolate) {
    long r = gpt2cpu_launch(L, g_test_arena, isolate);
    if (!isolate) return (int)r;
    int st; waitpid((pid_t)r, &st, 0); return WEXITSTATUS(st);
}
int main() {
    g_test_arena = (char*)mmap(nullptr, kHeaderBytes + (1 << 20), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    Report* rep = (Report*)g_test_arena;
    int bad = 0;
    for (int isolate = 0; isolate < 2; isolate++) for (int sched = 0; sched < 3; sched++) {
        memset(g_test_arena, 0, kPrintfOffset);
        g_test_top = kHeaderBytes;
        // block_sum_dynamic: 1000 elements, blocks of 64
        int n = 1000; static float x[1000]; for (int i = 0; i < n; i++) x[i] = (float)(i % 7) - 3.0f;
        put(x, sizeof x, 0, 0); put(nullptr, 16 * sizeof(float), 1, 1);
        pointer_arg(0, 0); pointer_arg(1, 1); int_arg(2, n);
        LaunchConfig L{}; L.entry = 0; L.schedule = sched; L.grid[0] = 16; L.grid[1] = L.grid[2] = 1;
        L.block[0] = 64; L.block[1] = L.block[2] = 1; L.shared_mem = 256; L.workers = 2; L.plain = 0;
        L.seed = 7; L.arena_fd = -1; L.nwindows = 2; L.nargs = 3;
        int rc = run(&L, isolate);
        for (int b = 0; b < 16; b++) { float s = 0; for (int i = b*64; i < b*64+64 && i < n; i++) s += x[i];
            if (at(1)[b] != s) { bad++; printf("sum mismatch block %d: %f vs %f\n", b, at(1)[b], s); break; } }
        // shuffles: 64 threads, width 8
        static float in[64]; for (int i = 0; i < 64; i++) in[i] = (float)i;
        put(in, sizeof in, 0, 0); put(nullptr, 64 * 6 * sizeof(float), 1, 1);
        pointer_arg(0, 0); pointer_arg(1, 1); int_arg(2, 8);
        L.entry = 1; L.grid[0] = 1; L.block[0] = 64; L.shared_mem = 0;
        rc |= run(&L, isolate);
        float* sh = at(1);
        for (int t = 0; t < 64; t++) {
            int lane = t % 32, base = t - (lane % 8), pos = lane % 8;
            float e0 = in[base + 3], e1 = in[base + (pos ^ 1)];
            float e2 = pos + 2 < 8 ? in[t + 2] : in[t], e3 = pos >= 2 ? in[t - 2] : in[t];
            float e5 = (float)(((t / 32) * 32 + 31 - lane) * 7);
            if (sh[t*6] != e0 || sh[t*6+1] != e1 || sh[t*6+2] != e2 || sh[t*6+3] != e3 || sh[t*6+5] != e5) { bad++; printf("shuffle mismatch t=%d\n", t); break; }
        }
        printf("isolate=%d schedule=%d rc=%d status=%d switches=%llu\n", isolate, sched, rc, rep->status, (unsigned long long)rep->switches);
        bad += rc != 0;
    }
    printf(bad ? "FAILED\n" : "ALL OK\n");
    return bad != 0;
}
