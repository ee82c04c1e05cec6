// launcher.cpp: a small process that runs CPU-backend launches for a Python process.
//
// Why: every launch runs in a forked child, so a faulting kernel cannot take the notebook down. But
// forking the notebook's own process costs more the bigger it is (its page tables are copied, and
// afterwards each page it writes faults once): 5-20 ms with PyTorch loaded. This process is tiny, so
// its forks are cheap. It shares one memory "arena" with Python (a memfd both map): the arrays of
// a launch, its report and its printf buffer live there, at offsets both sides agree on.
//
// Protocol on the socket (native layout, one request at a time): Python sends a Request; the
// launcher forks, answers the child's pid (int64, or -errno), waits for it and answers its wait
// status (int32). The child protects the guard ranges of the arena in its own address space, builds
// the kernel's arguments, and runs the launch in the module (gpt2cpu_launch with isolate=2).
#include "gpt2cpu_abi.h"

#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <map>
#include <string>

namespace {

constexpr uint32_t kMagic = 0x67707432;  // "gpt2"
constexpr int kMaxArgs = 64, kMaxProtects = 256;
constexpr size_t kRegion = size_t(1) << 18;  // gpt2cpu.h's fiber stack region

struct Arg {
    uint32_t is_pointer;   // 1: value is an arena offset to translate into an address
    uint32_t size;         // bytes of a scalar value
    uint64_t offset;       // arena offset (pointers)
    uint8_t bytes[16];     // the scalar's bytes
};
struct Protect { uint64_t offset, length; int32_t prot, pad; };
struct Request {
    uint32_t magic, quit;
    char library[1024];
    gpt2cpu::LaunchConfig cfg;  // its pointer fields are ignored: filled in from the offsets below
    uint64_t report_offset, printf_offset;
    uint64_t pool_regions;      // >0: run on the launcher's unguarded stack pool of this many regions
    uint32_t nargs, nprotects;
    Arg args[kMaxArgs];
    Protect protects[kMaxProtects];
};

bool read_all(int fd, void* p, size_t n) {
    char* c = (char*)p;
    while (n) {
        ssize_t r = read(fd, c, n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return false;
        c += r;
        n -= (size_t)r;
    }
    return true;
}
bool write_all(int fd, const void* p, size_t n) {
    const char* c = (const char*)p;
    while (n) {
        ssize_t r = write(fd, c, n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return false;
        c += r;
        n -= (size_t)r;
    }
    return true;
}

typedef long (*LaunchFn)(gpt2cpu::LaunchConfig*, int);

}  // namespace

int main(int argc, char** argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: launcher SOCKET_FD ARENA_FD ARENA_BYTES (started by helpers.cpu_backend)\n");
        return 2;
    }
    prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the Python process
    int sock = atoi(argv[1]), arena_fd = atoi(argv[2]);
    size_t arena_size = strtoull(argv[3], nullptr, 10);
    char* arena = (char*)mmap(nullptr, arena_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, arena_fd, 0);
    if (arena == MAP_FAILED) { perror("launcher: mmap arena"); return 2; }
    std::map<std::string, LaunchFn> modules;
    char* pool = nullptr;
    size_t pool_regions = 0;
    static Request req;
    while (read_all(sock, &req, sizeof req)) {
        if (req.magic != kMagic || req.quit) break;
        std::string lib(req.library, strnlen(req.library, sizeof req.library));
        LaunchFn launch = modules[lib];
        if (!launch) {
            void* h = dlopen(lib.c_str(), RTLD_NOW | RTLD_LOCAL);
            launch = h ? (LaunchFn)dlsym(h, "gpt2cpu_launch") : nullptr;
            if (!launch) {
                int64_t err = -ENOENT;
                fprintf(stderr, "launcher: cannot load %s: %s\n", lib.c_str(), dlerror());
                write_all(sock, &err, sizeof err);
                continue;
            }
            modules[lib] = launch;
        }
        if (req.pool_regions > pool_regions) {  // stacks shared by all children: mapped once, one VMA
            if (pool) munmap(pool, pool_regions * kRegion);
            pool_regions = req.pool_regions;
            pool = (char*)mmap(nullptr, pool_regions * kRegion, PROT_READ | PROT_WRITE,
                               MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (pool == MAP_FAILED) pool = nullptr, pool_regions = 0;
        }
        pid_t pid = fork();
        if (pid == 0) {
            for (uint32_t i = 0; i < req.nprotects; i++)
                mprotect(arena + req.protects[i].offset, req.protects[i].length, req.protects[i].prot);
            static void* values[kMaxArgs];
            static uint64_t storage[kMaxArgs][2];
            for (uint32_t i = 0; i < req.nargs; i++) {
                if (req.args[i].is_pointer) {
                    void* p = arena + req.args[i].offset;
                    memcpy(storage[i], &p, sizeof p);
                } else {
                    memcpy(storage[i], req.args[i].bytes, req.args[i].size);
                }
                values[i] = storage[i];
            }
            gpt2cpu::LaunchConfig cfg = req.cfg;
            cfg.args = values;
            cfg.report = (gpt2cpu::Report*)(arena + req.report_offset);
            cfg.printf_buf = arena + req.printf_offset;
            cfg.report->arena_base = (uint64_t)arena;
            cfg.pool = (req.pool_regions && pool) ? pool : nullptr;
            cfg.pool_regions = cfg.pool ? pool_regions : 0;
            launch(&cfg, 2);  // does not return
            _exit(2);
        }
        int64_t answer = pid < 0 ? -errno : pid;
        if (!write_all(sock, &answer, sizeof answer)) break;
        if (pid < 0) continue;
        int status = 0;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
        int32_t st = status;
        if (!write_all(sock, &st, sizeof st)) break;
    }
    return 0;
}
