"""`python -m helpers.train` under mpirun, with the hooks tests/test_parallel.py needs:

    mpirun ... python tests/mpi_runner.py [--dump-grads DIR] [--die RANK:STEP] [--die-saving N] -- FLAGS

--dump-grads DIR    after step 0, each rank saves its (summed) gradient buffer to DIR/grads.<rank>.npy
--die RANK:STEP     rank RANK kills itself (SIGKILL: no Python cleanup) after step STEP
--die-saving N      rank 0 is killed in the middle of its N-th checkpoint write (half the file written,
                    before the rename that would publish it)
--show-transport    rank 0 prints the model's dtype, and at the end the transport and the NCCL
                    collectives it called (the stand-in's NCCL records them)
"""
import argparse
import os
import signal
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.runtime import comm as comm_module, device  # noqa: E402
from helpers.train import loop  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dump-grads")
    parser.add_argument("--die")
    parser.add_argument("--die-saving", type=int)
    parser.add_argument("--show-transport", action="store_true")
    args, train_flags = parser.parse_known_args()
    train_flags = [f for f in train_flags if f != "--"]
    rank = comm_module.world().rank

    def on_step(record, model):
        if args.show_transport and rank == 0 and record["step"] == 0:
            print(f"model dtype: {model.dtype}", flush=True)
        if args.dump_grads and record["step"] == 0:
            np.save(Path(args.dump_grads) / f"grads.{rank}.npy", device.asnumpy(model.grads.memory))
        if args.die:
            who, when = map(int, args.die.split(":"))
            if rank == who and record["step"] == when:
                os.kill(os.getpid(), signal.SIGKILL)

    if args.die_saving is not None and rank == 0:
        real = loop.atomic_write

        def torn_write(path, write):
            def half_then_die(tmp):
                write(tmp)
                size = Path(tmp).stat().st_size
                with open(tmp, "r+b") as f:
                    f.truncate(size // 2)
                os.kill(os.getpid(), signal.SIGKILL)
            torn_write.calls += 1
            return real(path, half_then_die if torn_write.calls == args.die_saving else write)
        torn_write.calls = 0
        loop.atomic_write = torn_write

    real_train = loop.train
    loop.train = lambda cfg, comm=None: real_train(cfg, on_step=on_step, progress=False, comm=comm)
    status = loop.main(train_flags)
    world = comm_module.world()
    if args.show_transport and rank == 0:
        calls = sorted(set(getattr(world.nccl, "calls", []))) if getattr(world, "nccl", None) else []
        print(f"transport: {world.transport}; NCCL calls: {' '.join(calls) or 'none'}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
