"""Our NumPy backend against PyTorch eager on the CPU, one training step at a time, side by side.

    python benchmarks/train_step.py [--sizes tiny,tiny-T256,L6,124M] [--runs 3] [--steps 8] [--busy]
    python benchmarks/train_step.py --model llama [--runs 3]

Both train the same model on the same batches of tiny Shakespeare with AdamW (0.9, 0.95), weight decay
0.1, gradient clipping at 1.0: ours through helpers.model (backend "numpy"), PyTorch through Hugging
Face's GPT2LMHeadModel (or LlamaForCausalLM, eager attention) and torch.optim.AdamW. The GPT-2 sizes are
issue 17's: L4 H4 C128 at (B, T) = (12, 64) and (12, 256), L6 H6 C384 at (4, 64), and GPT-2 124M (L12
H12 C768) at (4, 64); --model llama is notebook 12's Llama (2 key/value heads, intermediate 384, tied
embeddings) at (12, 64).

Each run is a fresh process (so its peak memory is its own). The sides alternate run by run, and which
side goes first alternates too, so that a burst of other work on the machine falls on both. Per run: the
median step time over the steps after the first two, and the peak resident memory (ru_maxrss). Per side:
the median of its runs, with the spread (lowest - highest) shown; the ratio is the median of the runs'
paired ratios, with their spread.

The step's fraction of the machine's fp32 peak: the step's FLOPs (2 per multiply-add of every matmul,
forward and backward: 6 x tokens x the matmul weights, the classifier included, plus attention's QK^T and
AV over the whole T x T, as both sides compute it) per second, against the machine's peak measured here
as the best of 5 products of two 4096 x 4096 float32 matrices through NumPy's BLAS on all cores.

--busy also runs every size with a competing CPU-bound process per core (pure Python loops) started
before and stopped after each run, and prints each side's tokens/s there against its quiet tokens/s.
Every number printed is measured in this run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GPT2 = dict(vocab_size=50257)
#: name: (model config, B, T)
SIZES = {"tiny": (dict(GPT2, n_layer=4, n_head=4, n_embd=128, block_size=64), 12, 64),
         "tiny-T256": (dict(GPT2, n_layer=4, n_head=4, n_embd=128, block_size=256), 12, 256),
         "L6": (dict(GPT2, n_layer=6, n_head=6, n_embd=384, block_size=64), 4, 64),
         "124M": (dict(GPT2, n_layer=12, n_head=12, n_embd=768, block_size=64), 4, 64)}
LLAMA = {"llama": (dict(n_layer=4, n_head=4, n_kv_head=2, n_embd=128, intermediate_size=384, block_size=64,
                        vocab_size=50257, tie_embeddings=True), 12, 64)}

WORKER = r"""
import json, resource, sys, time
import numpy as np
sys.path.insert(0, sys.argv[3])
which, steps = sys.argv[1], int(sys.argv[2])
config = json.loads(sys.argv[4]); B, T = int(sys.argv[5]), int(sys.argv[6])
llama = "n_kv_head" in config
from helpers.train import data
train_tokens, _ = data.load_tiny_shakespeare()
loader = data.DataLoader(train_tokens, B, T, seed=0)
batches = [loader.next_batch() for _ in range(steps)]
times, losses = [], []
if which == "ours":
    from helpers.model.gpt2 import GPT2, AdamW, GPT2Config
    from helpers.model.llama import Llama, LlamaConfig
    from helpers.ops.global_norm import clip_coefficient
    model = Llama(LlamaConfig(**config), backend="numpy", seed=0) if llama else \
        GPT2(GPT2Config(**config), backend="numpy", seed=0)
    opt = AdamW(model, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    for x, y in batches:
        t0 = time.perf_counter()
        _, loss = model.forward(x, y)
        model.zero_grad()
        model.backward()
        opt.step(grad_scale=clip_coefficient(model.grad_norm(), 1.0))
        times.append(time.perf_counter() - t0)
        losses.append(loss)
else:
    import torch, transformers
    torch.manual_seed(0)
    if llama:
        cfg = transformers.LlamaConfig(vocab_size=config["vocab_size"], hidden_size=config["n_embd"],
                                       intermediate_size=config["intermediate_size"], num_hidden_layers=config["n_layer"],
                                       num_attention_heads=config["n_head"], num_key_value_heads=config["n_kv_head"],
                                       max_position_embeddings=config["block_size"], tie_word_embeddings=True)
        model = transformers.LlamaForCausalLM._from_config(cfg, attn_implementation="eager").train()
    else:
        cfg = transformers.GPT2Config(vocab_size=config["vocab_size"], n_positions=config["block_size"],
                                      n_embd=config["n_embd"], n_layer=config["n_layer"], n_head=config["n_head"],
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        model = transformers.GPT2LMHeadModel(cfg).train()
    params = list(model.parameters())
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() == 2], "weight_decay": 0.1},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.95))
    for x, y in batches:
        t0 = time.perf_counter()
        logits = model(torch.from_numpy(x.astype(np.int64))).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 torch.from_numpy(y.astype(np.int64)).reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
print(json.dumps({"times": times, "losses": losses,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


PEAK = r"""
import time, numpy as np
a = np.random.default_rng(0).standard_normal((4096, 4096)).astype(np.float32)
c = np.empty_like(a)
np.matmul(a, a, out=c)
best = min(t for t in [(lambda t0: (np.matmul(a, a, out=c), time.perf_counter() - t0)[1])(time.perf_counter())
                       for _ in range(5)])
print(2 * 4096 ** 3 / best)
"""
SPIN = "x = 0\nwhile True:\n    x += 1\n"


def run(which: str, steps: int, config: dict, B: int, T: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", WORKER, which, str(steps), str(ROOT), json.dumps(config),
                           str(B), str(T)], capture_output=True, text=True, env=os.environ.copy())
    if proc.returncode != 0:
        raise RuntimeError(f"{which} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def step_flops(config: dict, B: int, T: int) -> float:
    """FLOPs of one training step (see the module's docstring); GPT-2 only."""
    L, C, V = config["n_layer"], config["n_embd"], config["vocab_size"]
    Vp = -(-V // 128) * 128 if "n_kv_head" not in config else V
    matmul_weights = L * 12 * C * C + Vp * C
    tokens = B * T
    return 6 * tokens * matmul_weights + 3 * L * 4 * B * T * T * C


def measure(name: str, size: tuple, runs: int, steps: int, busy: bool) -> dict:
    import numpy as np
    config, B, T = size
    per_run = {"ours": [], "torch": []}
    for k in range(runs):
        for which in (("torch", "ours") if k % 2 == 0 else ("ours", "torch")):
            spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(os.cpu_count() or 1)] \
                if busy else []
            try:
                r = run(which, steps, config, B, T)
            finally:
                for p in spinners:
                    p.kill()
                    p.wait()
            r["step_s"] = float(np.median(r["times"][2:] or r["times"]))
            per_run[which].append(r)
            where = f"{name}{' (busy)' if busy else ''}"
            print(f"  {where} run {k + 1}/{runs}, {which:>5}: {1e3 * r['step_s']:.0f} ms/step, "
                  f"peak {r['peak_rss_mib']:.0f} MiB", flush=True)
    out = {}
    for which, rs in per_run.items():
        tps = [B * T / r["step_s"] for r in rs]
        mem = [r["peak_rss_mib"] for r in rs]
        out[which] = dict(tokens_per_s=float(np.median(tps)), tps_range=(min(tps), max(tps)),
                          peak_mib=float(np.median(mem)), mem_range=(min(mem), max(mem)),
                          first_loss=rs[0]["losses"][0], last_loss=rs[0]["losses"][-1])
    speed = [t["step_s"] / o["step_s"] for o, t in zip(per_run["ours"], per_run["torch"])]
    memory = [o["peak_rss_mib"] / t["peak_rss_mib"] for o, t in zip(per_run["ours"], per_run["torch"])]
    out["speed"] = (float(np.median(speed)), min(speed), max(speed))
    out["memory"] = (float(np.median(memory)), min(memory), max(memory))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["gpt2", "llama"], default="gpt2")
    parser.add_argument("--sizes", default=",".join(SIZES), help=f"GPT-2 sizes, comma-separated, of {', '.join(SIZES)}")
    parser.add_argument("--runs", type=int, default=3, help="runs per side and size (alternating)")
    parser.add_argument("--steps", type=int, default=8, help="training steps per run (the first two not counted)")
    parser.add_argument("--busy", action="store_true", help="also under a competing CPU-bound process per core")
    args = parser.parse_args(argv)
    table = LLAMA if args.model == "llama" else SIZES
    names = list(table) if args.model == "llama" else args.sizes.split(",")
    unknown = [n for n in names if n not in table]
    if unknown:
        parser.error(f"unknown sizes {unknown}: choose from {', '.join(SIZES)}")
    if args.runs < 1 or args.steps < 3:
        parser.error("--runs must be at least 1 and --steps at least 3 (the first two steps are not counted)")
    peak = float(subprocess.run([sys.executable, "-c", PEAK], capture_output=True, text=True, check=True).stdout)
    print(f"fp32 peak of this machine: {peak / 1e9:.0f} GFLOP/s (best 4096^3 sgemm through NumPy's BLAS, "
          f"{os.cpu_count()} cores)", flush=True)
    results = {}
    for name in names:
        results[name] = {"quiet": measure(name, table[name], args.runs, args.steps, busy=False)}
        if args.busy:
            results[name]["busy"] = measure(name, table[name], args.runs, args.steps, busy=True)
    print(f"\n{args.steps} steps per run ({args.steps - 2} counted), {args.runs} runs per side, alternating; "
          f"medians, spread (low-high) in brackets")
    print("| config (B, T) | ours tok/s | PyTorch tok/s | ratio | our peak MiB | PyTorch peak MiB | ratio | "
          "ours: % of fp32 peak |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        config, B, T = table[name]
        r = results[name]["quiet"]
        o, t = r["ours"], r["torch"]
        label = f"{name}: L{config['n_layer']} H{config['n_head']} C{config['n_embd']} ({B}, {T})"
        flops = step_flops(config, B, T) * o["tokens_per_s"] / (B * T)
        frac = "" if args.model == "llama" else f"{100 * flops / peak:.0f}%"
        print(f"| {label} | {o['tokens_per_s']:,.0f} [{o['tps_range'][0]:,.0f}-{o['tps_range'][1]:,.0f}] | "
              f"{t['tokens_per_s']:,.0f} [{t['tps_range'][0]:,.0f}-{t['tps_range'][1]:,.0f}] | "
              f"**{r['speed'][0]:.2f}x** [{r['speed'][1]:.2f}-{r['speed'][2]:.2f}] | "
              f"{o['peak_mib']:,.0f} | {t['peak_mib']:,.0f} | **{r['memory'][0]:.2f}x** "
              f"[{r['memory'][1]:.2f}-{r['memory'][2]:.2f}] | {frac} |")
    if args.busy:
        print("\nunder a competing CPU-bound process per core: tokens/s busy / quiet (the slowdown), medians")
        for name in names:
            q, b = results[name]["quiet"], results[name]["busy"]
            ours, torch = (b[w]["tokens_per_s"] / q[w]["tokens_per_s"] for w in ("ours", "torch"))
            print(f"  {name}: ours {b['ours']['tokens_per_s']:,.0f} tok/s = {ours:.2f}x of quiet; PyTorch "
                  f"{b['torch']['tokens_per_s']:,.0f} = {torch:.2f}x of quiet; busy ratio {b['speed'][0]:.2f}x")
    for name in names:
        r = results[name]["quiet"]
        print(f"  {name} losses, step 0 -> last: ours {r['ours']['first_loss']:.3f} -> {r['ours']['last_loss']:.3f}, "
              f"PyTorch {r['torch']['first_loss']:.3f} -> {r['torch']['last_loss']:.3f}")
    return results


if __name__ == "__main__":
    main()
