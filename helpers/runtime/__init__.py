"""Layer 1, the runtime: running a `.cu` file's kernels on the active device.

- `device`: the backend (CuPy on a GPU, the CPU backend elsewhere), arrays, loading modules, timing;
- `cpu_backend`: the same `.cu` files compiled for the CPU with CUDA's semantics (and its checks);
- `launch_checks`: every launch's arguments checked against the kernel's C signature, on both backends;
- `cuda_source`: reading a `.cu` file (kernels, signatures, includes) without a compiler;
- `nvrtc`, `nvrtc_report`: NVIDIA's runtime compiler without a GPU, and what it says of each kernel;
- `comm`: MPI (mpi4py) and NCCL between the processes of a data-parallel run;
- `errors`: the exceptions every layer raises.

Imports only the standard library, NumPy and (when present) CuPy: nothing above it.
"""
