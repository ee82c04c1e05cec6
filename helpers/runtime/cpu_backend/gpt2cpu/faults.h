// faults.h: a fault in the launch process is written to the report, then the process exits. The
// Python side turns the report into a KernelError naming the kernel, the argument (from the
// faulting address and the windows of memory.h), the thread, the block and the source line.
#pragma once

namespace gpt2cpu {

static uint64_t g_module_base;

static void fault_handler(int sig, siginfo_t* info, void* uctx) {
    int access = -1;
    uintptr_t sp = 0;
    uint64_t pc = 0;
    ucontext_t* uc = (ucontext_t*)uctx;
#if defined(__x86_64__) && defined(__linux__)
    pc = (uint64_t)uc->uc_mcontext.gregs[REG_RIP];
    sp = (uintptr_t)uc->uc_mcontext.gregs[REG_RSP];
    if (sig == SIGSEGV) access = (uc->uc_mcontext.gregs[REG_ERR] & 2) ? 1 : 0;
#elif defined(__aarch64__) && defined(__linux__)
    pc = (uint64_t)uc->uc_mcontext.pc;
    sp = (uintptr_t)uc->uc_mcontext.sp;
#elif defined(__APPLE__) && defined(__x86_64__)
    pc = (uint64_t)uc->uc_mcontext->__ss.__rip;
    sp = (uintptr_t)uc->uc_mcontext->__ss.__rsp;
    if (sig == SIGSEGV || sig == SIGBUS) access = (uc->uc_mcontext->__es.__err & 2) ? 1 : 0;
#elif defined(__APPLE__) && defined(__aarch64__)
    pc = (uint64_t)uc->uc_mcontext->__ss.__pc;
    sp = (uintptr_t)uc->uc_mcontext->__ss.__sp;
    if (sig == SIGSEGV || sig == SIGBUS) access = (uc->uc_mcontext->__es.__esr >> 6) & 1;  // ESR's WnR bit
#else
    (void)uc;
#endif
    // racecheck's write tracking: the first write to a page of a writable argument in this block
    if ((sig == SIGSEGV || sig == SIGBUS) && access != 0 && tracking_open_page(info->si_addr)) return;
    Report* r = g_report;
    int32_t expected = OK;
    if (__atomic_compare_exchange_n(&r->status, &expected, SIGNAL, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
        r->signo = sig;
        r->addr = (uint64_t)info->si_addr;
        r->access = access;
        r->pc = pc;
        r->module_base = g_module_base;
        r->fault_kind = FAULT_MEMORY;
#if defined(SI_KERNEL)
        if (sig == SIGSEGV && info->si_code == SI_KERNEL) r->fault_kind = FAULT_GENERAL_PROTECTION;
#endif
        uintptr_t a = (uintptr_t)info->si_addr;
        Worker* owner = nullptr;
        if ((sig == SIGSEGV || sig == SIGBUS) && shared_slot_of(info->si_addr, &owner) >= 0) {
            r->fault_kind = FAULT_SHARED;
            describe_shared_fault(r->message, sizeof r->message, info->si_addr, access);
        }
        // Which fiber was running on this OS thread?
        pthread_t me = pthread_self();
        for (int i = 0; i < g_nworkers; i++) {
            Worker* w = g_workers[i];
            if (!w || !pthread_equal(w->thread, me) || !w->current) continue;
            Fiber* f = w->current;
            set_thread_info(r, f);
            uintptr_t usable_lo = (uintptr_t)f->stack_lo + kPage, hi = (uintptr_t)f->stack_lo + kRegion;
            bool sp_escaped = sp && (sp < usable_lo || sp >= hi);
            bool in_guard = a >= (uintptr_t)f->stack_lo && a < usable_lo;
            if ((sp_escaped || in_guard) && r->fault_kind != FAULT_SHARED) r->fault_kind = FAULT_STACK_OVERFLOW;
        }
    }
    _exit(3);
}

static void install_fault_handlers() {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = fault_handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    int sigs[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT};
    sigset_t unblock;
    sigemptyset(&unblock);
    for (int s : sigs) { sigaction(s, &sa, nullptr); sigaddset(&unblock, s); }
    pthread_sigmask(SIG_UNBLOCK, &unblock, nullptr);
}

}  // namespace gpt2cpu
