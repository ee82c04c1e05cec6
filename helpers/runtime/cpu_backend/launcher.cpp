// launcher.cpp: a small process that runs CPU-backend launches for a Python process.
//
// Why: every launch runs in a forked child, so a faulting kernel cannot take the notebook down. But
// forking the notebook's own process costs more the bigger it is (its page tables are copied, and
// afterwards each page it writes faults once): 5-20 ms with PyTorch loaded. This process is tiny, so
// its forks are cheap. It shares one memory "arena" with Python (a memfd, or POSIX shared memory on
// macOS, that both map): the arrays of a launch, its arguments, report and printf records live
// there, at offsets both sides agree on (gpt2cpu/abi.h).
//
// Protocol on the socket (native layout, one request at a time): Python sends a Request with a
// sequence number; the launcher forks and answers a Reply {seq, PID, child pid or -errno}, waits for
// the child and answers {seq, STATUS, wait status}. Python checks every reply's sequence number, and
// after any exchange it could not finish (an interrupt, a timeout it gave up on) it kills this
// process's whole process group and starts a new launcher with a new arena, so a stale reply or a
// stale child can never touch a later launch.
//
// Lifetime: this process leads its own process group (Python starts it so); it exits when the
// socket closes (Python exited, however it exited), killing the running child first. The child maps
// the arguments into their guard windows and runs the launch in the module (gpt2cpu_launch with
// isolate=2), which reads everything else from the arena.
#include "gpt2cpu/abi.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <map>
#include <string>

namespace {

using gpt2cpu::LauncherReply;
using gpt2cpu::LauncherRequest;
using gpt2cpu::REPLY_PID;
using gpt2cpu::REPLY_STATUS;
constexpr size_t kRegion = size_t(1) << gpt2cpu::kRegionShift;

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

typedef long (*LaunchFn)(gpt2cpu::LaunchConfig*, char*, int);

int g_sigchld_pipe[2] = {-1, -1};
void on_sigchld(int) {
    int saved = errno;
    char c = 0;
    (void)!write(g_sigchld_pipe[1], &c, 1);
    errno = saved;
}

bool reply(int sock, uint64_t seq, int32_t kind, int64_t value) {
    LauncherReply r{seq, kind, 0, value};
    return write_all(sock, &r, sizeof r);
}

// Wait for the child, watching the socket: if Python goes away (EOF), kill the child and report that.
// Returns false when the launcher should exit.
bool wait_child(int sock, pid_t pid, int* status) {
    for (;;) {
        pid_t done = waitpid(pid, status, WNOHANG);
        if (done == pid) return true;
        if (done < 0 && errno != EINTR) { *status = 0; return true; }
        struct pollfd fds[2] = {{sock, POLLIN, 0}, {g_sigchld_pipe[0], POLLIN, 0}};
        int n = poll(fds, 2, 1000);
        if (n < 0 && errno != EINTR) return false;
        if (fds[1].revents & POLLIN) {
            char buf[64];
            while (read(g_sigchld_pipe[0], buf, sizeof buf) > 0) {}
        }
        if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            // Python sends nothing while a launch runs: readable means it closed the socket
            kill(pid, SIGKILL);
            while (waitpid(pid, status, 0) < 0 && errno == EINTR) {}
            return false;
        }
    }
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: launcher SOCKET_FD ARENA_FD ARENA_BYTES (started by helpers.runtime.cpu_backend)\n");
        return 2;
    }
    int sock = atoi(argv[1]), arena_fd = atoi(argv[2]);
    size_t arena_size = strtoull(argv[3], nullptr, 10);
    char* arena = (char*)mmap(nullptr, arena_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, arena_fd, 0);
    if (arena == MAP_FAILED) { perror("launcher: mmap arena"); return 2; }
    if (pipe(g_sigchld_pipe) != 0) { perror("launcher: pipe"); return 2; }
    for (int fd : g_sigchld_pipe) {
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        fcntl(fd, F_SETFD, FD_CLOEXEC);
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigchld;
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, nullptr);
    signal(SIGINT, SIG_IGN);  // Ctrl-C in a terminal is Python's to handle; it then closes or kills us
    std::map<std::string, LaunchFn> modules;
    char* pool = nullptr;
    size_t pool_regions = 0;
    static LauncherRequest req;
    while (read_all(sock, &req, sizeof req)) {
        if (req.magic != (uint32_t)gpt2cpu::kLauncherMagic || req.quit) break;
        std::string lib(req.library, strnlen(req.library, sizeof req.library));
        LaunchFn launch = modules[lib];
        if (!launch) {
            void* h = dlopen(lib.c_str(), RTLD_NOW | RTLD_LOCAL);
            launch = h ? (LaunchFn)dlsym(h, "gpt2cpu_launch") : nullptr;
            if (!launch) {
                fprintf(stderr, "launcher: cannot load %s: %s\n", lib.c_str(), dlerror());
                if (!reply(sock, req.seq, REPLY_PID, -ENOENT)) break;
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
            signal(SIGCHLD, SIG_DFL);
            signal(SIGINT, SIG_DFL);
            gpt2cpu::LaunchConfig cfg = req.cfg;
            cfg.arena_fd = arena_fd;
            cfg.pool = (req.pool_regions && pool) ? pool : nullptr;
            cfg.pool_regions = cfg.pool ? pool_regions : 0;
            launch(&cfg, arena, 2);  // does not return
            _exit(2);
        }
        if (!reply(sock, req.seq, REPLY_PID, pid < 0 ? -errno : pid)) {
            if (pid > 0) kill(pid, SIGKILL);
            break;
        }
        if (pid < 0) continue;
        int status = 0;
        if (!wait_child(sock, pid, &status)) break;
        if (!reply(sock, req.seq, REPLY_STATUS, status)) break;
    }
    return 0;
}
