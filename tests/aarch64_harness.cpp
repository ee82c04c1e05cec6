// A C++ driver for tests/test_aarch64.py: runs kernels of tests/kernels/features.cu through the
// CPU backend's launch entry point (in-process and forked, all three schedules) and checks them.
// Compiled for aarch64 after the module source that helpers.cpu_backend generates, run under qemu.
#undef printf
#include <cstdio>
#include <sys/wait.h>
static int run(gpt2cpu::LaunchConfig* L, int isolate) {
    long r = gpt2cpu_launch(L, isolate);
    if (!isolate) return (int)r;
    int st; waitpid((pid_t)r, &st, 0); return WEXITSTATUS(st);
}
int main() {
    static gpt2cpu::Report rep; static char pbuf[1 << 16];
    int bad = 0;
    for (int isolate = 0; isolate < 2; isolate++) for (int sched = 0; sched < 3; sched++) {
        // block_sum_dynamic: 1000 elements, blocks of 64
        int n = 1000; static float x[1000], out[16]; for (int i = 0; i < n; i++) x[i] = (float)(i % 7) - 3.0f;
        float* xp = x; float* op = out; void* args[3] = {&xp, &op, &n};
        gpt2cpu::LaunchConfig L{}; L.entry = 0; L.schedule = sched; L.grid[0] = 16; L.grid[1] = L.grid[2] = 1;
        L.block[0] = 64; L.block[1] = L.block[2] = 1; L.shared_mem = 256; L.args = args; L.workers = 2; L.plain = 0;
        L.seed = 7; L.report = &rep; L.printf_buf = pbuf; L.printf_cap = sizeof pbuf;
        float* shared_out = (float*)mmap(nullptr, 4096, PROT_READ|PROT_WRITE, MAP_SHARED|MAP_ANONYMOUS, -1, 0);
        op = shared_out;
        int rc = run(&L, isolate);
        for (int b = 0; b < 16; b++) { float s = 0; for (int i = b*64; i < b*64+64 && i < n; i++) s += x[i];
            if (shared_out[b] != s) { bad++; printf("sum mismatch block %d: %f vs %f\n", b, shared_out[b], s); break; } }
        // shuffles: 64 threads, width 8
        static float in[64]; for (int i = 0; i < 64; i++) in[i] = (float)i;
        float* sh = (float*)mmap(nullptr, 4096, PROT_READ|PROT_WRITE, MAP_SHARED|MAP_ANONYMOUS, -1, 0);
        float* inp = in; int width = 8; void* a2[3] = {&inp, &sh, &width};
        L.entry = 1; L.grid[0] = 1; L.block[0] = 64; L.shared_mem = 0; L.args = a2;
        rc |= run(&L, isolate);
        for (int t = 0; t < 64; t++) {
            int lane = t % 32, base = t - (lane % 8), pos = lane % 8;
            float e0 = in[base + 3], e1 = in[base + (pos ^ 1)];
            float e2 = pos + 2 < 8 ? in[t + 2] : in[t], e3 = pos >= 2 ? in[t - 2] : in[t];
            float e5 = (float)(((t / 32) * 32 + 31 - lane) * 7);
            if (sh[t*6] != e0 || sh[t*6+1] != e1 || sh[t*6+2] != e2 || sh[t*6+3] != e3 || sh[t*6+5] != e5) { bad++; printf("shuffle mismatch t=%d\n", t); break; }
        }
        printf("isolate=%d schedule=%d rc=%d status=%d switches=%llu\n", isolate, sched, rc, rep.status, (unsigned long long)rep.switches);
        bad += rc != 0;
    }
    printf(bad ? "FAILED\n" : "ALL OK\n");
    return bad != 0;
}
