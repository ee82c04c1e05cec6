// fibers.h: the threads of a block as fibers, and the context switch between them.
//
// A fiber is a stack and the registers saved when it last switched out. One fiber's stack region is
// [guard page][stack ... grows down]; all regions of a launch are one mapping, so the running fiber
// is found from the stack pointer, `(sp - pool) >> kRegionShift`, with no thread-local storage.
// The switch is hand-written for x86-64 and aarch64 (11 ns here against 230 ns for swapcontext,
// which also saves the signal mask with a system call); ucontext is the portable fallback.
#pragma once

namespace gpt2cpu {

struct Ctx {
#if defined(GPT2CPU_USE_UCONTEXT)
    ucontext_t uc;
#else
    void* sp;
#endif
};

struct Fiber;
typedef void (*FiberMain)(Fiber*);

static inline uintptr_t stack_pointer() {
    uintptr_t sp;
#if defined(__x86_64__)
    __asm__("movq %%rsp, %0" : "=r"(sp));
#elif defined(__aarch64__)
    __asm__("mov %0, sp" : "=r"(sp));
#else
    volatile char probe = 0;
    sp = (uintptr_t)&probe;
#endif
    return sp;
}

#if !defined(GPT2CPU_USE_UCONTEXT)
// The assembler's directives for a hidden global function: ELF (Linux) and Mach-O (macOS, where C
// names get a leading underscore) differ only in these, the instructions are the same.
#if defined(__APPLE__)
#define GPT2CPU_ASM_BEGIN(f) ".globl _" #f "\n.private_extern _" #f "\n.p2align 4\n_" #f ":\n"
#define GPT2CPU_ASM_END(f) "\n"
#else
#define GPT2CPU_ASM_BEGIN(f) ".globl " #f "\n.hidden " #f "\n.type " #f ",%function\n.p2align 4\n" #f ":\n"
#define GPT2CPU_ASM_END(f) "\n.size " #f ",.-" #f "\n"
#endif
extern "C" void gpt2cpu_ctx_switch(void** save_sp, void* load_sp) __attribute__((visibility("hidden")));
extern "C" void gpt2cpu_fiber_trampoline() __attribute__((visibility("hidden")));
#if defined(__x86_64__)
// Save the callee-saved registers on the current stack, store its pointer, load the other stack,
// restore its registers and return into it.
__asm__(".text\n" GPT2CPU_ASM_BEGIN(gpt2cpu_ctx_switch) R"(
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
)" GPT2CPU_ASM_END(gpt2cpu_ctx_switch) GPT2CPU_ASM_BEGIN(gpt2cpu_fiber_trampoline) R"(
    movq %rbx, %rdi
    callq *%r12
    ud2
)" GPT2CPU_ASM_END(gpt2cpu_fiber_trampoline));
static inline void* fiber_initial_sp(char* top, FiberMain fn, Fiber* arg) {
    // What the switch pops: r15 r14 r13 r12=fn rbx=arg rbp, then `ret` into the trampoline.
    // top is 16-aligned; after `ret` rsp must be 16-aligned so the trampoline's call is ABI-correct.
    uint64_t* sp = (uint64_t*)(top - 16) - 7;
    sp[0] = 0; sp[1] = 0; sp[2] = 0;            // r15 r14 r13
    sp[3] = (uint64_t)fn;                       // r12
    sp[4] = (uint64_t)arg;                      // rbx
    sp[5] = 0;                                  // rbp
    sp[6] = (uint64_t)&gpt2cpu_fiber_trampoline;
    return sp;
}
#elif defined(__aarch64__)
// AAPCS64 callee-saved state: x19-x30 (x30 is the return address), sp, d8-d15. x18 is left alone:
// Apple reserves it for the platform (and Linux does not need it saved), so the same code follows
// both ABIs.
__asm__(".text\n" GPT2CPU_ASM_BEGIN(gpt2cpu_ctx_switch) R"(
    sub sp, sp, #160
    stp x19, x20, [sp, #0]
    stp x21, x22, [sp, #16]
    stp x23, x24, [sp, #32]
    stp x25, x26, [sp, #48]
    stp x27, x28, [sp, #64]
    stp x29, x30, [sp, #80]
    stp d8, d9, [sp, #96]
    stp d10, d11, [sp, #112]
    stp d12, d13, [sp, #128]
    stp d14, d15, [sp, #144]
    mov x9, sp
    str x9, [x0]
    mov sp, x1
    ldp x19, x20, [sp, #0]
    ldp x21, x22, [sp, #16]
    ldp x23, x24, [sp, #32]
    ldp x25, x26, [sp, #48]
    ldp x27, x28, [sp, #64]
    ldp x29, x30, [sp, #80]
    ldp d8, d9, [sp, #96]
    ldp d10, d11, [sp, #112]
    ldp d12, d13, [sp, #128]
    ldp d14, d15, [sp, #144]
    add sp, sp, #160
    ret
)" GPT2CPU_ASM_END(gpt2cpu_ctx_switch) GPT2CPU_ASM_BEGIN(gpt2cpu_fiber_trampoline) R"(
    mov x0, x19
    blr x20
    brk #0
)" GPT2CPU_ASM_END(gpt2cpu_fiber_trampoline));
static inline void* fiber_initial_sp(char* top, FiberMain fn, Fiber* arg) {
    uint64_t* sp = (uint64_t*)(top - 160);
    memset(sp, 0, 160);
    sp[0] = (uint64_t)arg;                              // x19
    sp[1] = (uint64_t)fn;                               // x20
    sp[11] = (uint64_t)&gpt2cpu_fiber_trampoline;       // x30
    return sp;
}
#endif
static inline void ctx_switch(Ctx* from, Ctx* to) { gpt2cpu_ctx_switch(&from->sp, to->sp); }
static inline void ctx_init(Ctx* c, char* stack_lo, char* stack_hi, FiberMain fn, Fiber* arg) {
    (void)stack_lo;
    c->sp = fiber_initial_sp(stack_hi, fn, arg);
}
#else  // portable fallback
static inline void ctx_switch(Ctx* from, Ctx* to) { swapcontext(&from->uc, &to->uc); }
static void ucontext_entry(unsigned hi, unsigned lo);
static FiberMain g_uc_fn;
static inline void ctx_init(Ctx* c, char* stack_lo, char* stack_hi, FiberMain fn, Fiber* arg) {
    getcontext(&c->uc);
    c->uc.uc_stack.ss_sp = stack_lo;
    c->uc.uc_stack.ss_size = (size_t)(stack_hi - stack_lo);
    c->uc.uc_link = nullptr;
    g_uc_fn = fn;
    uintptr_t p = (uintptr_t)arg;
    makecontext(&c->uc, (void (*)())ucontext_entry, 2, (unsigned)(p >> 32), (unsigned)(p & 0xffffffffu));
}
static void ucontext_entry(unsigned hi, unsigned lo) {
    g_uc_fn((Fiber*)(((uintptr_t)hi << 32) | lo));
    abort();
}
#endif

}  // namespace gpt2cpu
