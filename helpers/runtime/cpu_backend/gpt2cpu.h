// gpt2cpu.h: run unchanged CUDA C kernels on the CPU, with CUDA semantics.
//
// Every kernel module of the CPU backend is one translation unit: this header, then the .cu file
// (lightly rewritten by helpers/runtime/cpu_backend: `__shared__` declarations become per-block variables
// in guarded shared memory, `extern __shared__` the block's dynamic shared memory), then generated
// entry points. Build: g++ -O2 -fPIC -shared -fvisibility=hidden -include gpt2cpu.h.
//
// The execution model, and the file that owns each part of it (gpt2cpu/):
// - abi.h        what modules, the launcher and Python share (Python reads this file);
// - platform.h   system headers, CUDA's keywords;
// - types.h      vector types whose every access checks CUDA's alignment;
// - fibers.h     each CUDA thread is a fiber, switched by hand-written assembly (or ucontext);
// - state.h      fibers, blocks, workers (one OS thread per core takes blocks from a counter);
// - memory.h     argument windows, guarded shared memory, write tracking for racecheck, globals;
// - scheduler.h  barriers, __activemask, deadlocks: a fiber runs until it waits, then the next one;
// - warp.h       shuffles, votes, __syncwarp, and the warp collectives of include/mma.h (wmma);
// - atomics.h    atomics (blocks really run in parallel);
// - device_api.h threadIdx and friends, printf, assert;
// - intrinsics.h the math API and the intrinsics (bit-exact where CUDA defines the result);
// - faults.h     a fault becomes a report for the Python side, then the launch process exits;
// - launch.h     a launch from start to end, and the module's exported entry points.
// Every launch runs in a child process (forked by the launcher, launcher.cpp), so that a faulting
// kernel, a stack overflow or an endless loop never takes the calling Python process down.
#pragma once

#include "gpt2cpu/platform.h"
#include "gpt2cpu/types.h"
#include "gpt2cpu/fibers.h"
#include "gpt2cpu/state.h"
#include "gpt2cpu/memory.h"
#include "gpt2cpu/scheduler.h"
#include "gpt2cpu/warp.h"
#include "gpt2cpu/atomics.h"
#include "gpt2cpu/device_api.h"
#include "gpt2cpu/intrinsics.h"
#include "gpt2cpu/faults.h"
#include "gpt2cpu/launch.h"
