"""The errors of the kernel runtime (re-exported by `helpers.device`)."""


class LaunchError(ValueError):
    """A launch that does not match the kernel: wrong arguments, grid, block or shared memory.

    Raised before anything runs, on both backends."""


class KernelError(RuntimeError):
    """A kernel that faulted while running: out-of-bounds access, stack overflow, a barrier not
    all threads reach, a timeout... The notebook's Python process is unharmed; the next launch works."""


class RaceError(AssertionError):
    """`racecheck` found outputs that depend on the order in which threads run."""


class CompileError(RuntimeError):
    """A `.cu` file that does not compile (the compiler's messages are in the text)."""


class DeviceUnavailableError(RuntimeError):
    """The backend asked for (GPT2_DEVICE=cupy) cannot work on this machine; the text says why."""


class RankFailure(RuntimeError):
    """Another process of a multi-process (MPI) run died or cannot be reached: this one cannot go on."""


class MPIUnavailableError(RuntimeError):
    """A process started by an MPI launcher without mpi4py (the text says what to install)."""
