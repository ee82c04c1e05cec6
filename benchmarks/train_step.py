"""Our NumPy backend against PyTorch eager on the CPU, one training step at a time, side by side.

    python benchmarks/train_step.py [--model gpt2|llama] [--steps 20] [--repeats 2]

Both train the same model (notebook 09's default: L=4, H=4, C=128, T=64, B=12, GPT-2's vocabulary;
with --model llama the Llama of the training CLI's default, 2 key/value heads, intermediate 384, tied
embeddings: notebook 12's) on the same batches of tiny Shakespeare with AdamW (0.9, 0.95), weight decay
0.1, gradient clipping at 1.0: ours through helpers.model (backend "numpy"), PyTorch through Hugging
Face's GPT2LMHeadModel or LlamaForCausalLM (eager attention) and torch.optim.AdamW. Each runs in its own fresh process (so peak memory is its own), the two
alternating `--repeats` times; reported: median tokens/s over the steps after the first two, and
the process's peak resident memory (ru_maxrss).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"gpt2": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=50257),
           "llama": dict(n_layer=4, n_head=4, n_kv_head=2, n_embd=128, intermediate_size=384, block_size=64,
                         vocab_size=50257, tie_embeddings=True)}
B, T = 12, 64

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


def run(which: str, steps: int, config: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", WORKER, which, str(steps), str(ROOT), json.dumps(config),
                           str(B), str(T)], capture_output=True, text=True, env=os.environ.copy())
    if proc.returncode != 0:
        raise RuntimeError(f"{which} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(CONFIGS), default="gpt2")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    config = CONFIGS[args.model]
    import numpy as np
    results = {"ours": [], "torch": []}
    for k in range(args.repeats):
        for which in ("torch", "ours"):
            r = run(which, args.steps, config)
            results[which].append(r)
            step_ms = 1e3 * float(np.median(r["times"][2:] or r["times"]))
            print(f"  run {k + 1}/{args.repeats}, {which:>5}: {step_ms:.0f} ms/step, peak {r['peak_rss_mib']:.0f} MiB",
                  flush=True)
    summary = {}
    for which, runs in results.items():
        step_times = np.concatenate([r["times"][2:] for r in runs])
        summary[which] = dict(tokens_per_s=B * T / float(np.median(step_times)), ms_per_step=1e3 * float(np.median(step_times)),
                              peak_rss_mib=max(r["peak_rss_mib"] for r in runs), first_loss=runs[0]["losses"][0],
                              last_loss=runs[0]["losses"][-1])
    kv = f" KV={config['n_kv_head']} I={config['intermediate_size']}" if "n_kv_head" in config else ""
    print(f"one training step of {args.model}, L={config['n_layer']} H={config['n_head']}{kv} C={config['n_embd']} "
          f"T={T} B={B} V={config['vocab_size']}, {args.steps} steps x {args.repeats} runs each, {os.cpu_count()} cores")
    print(f"{'':28}{'tokens/s':>10}{'ms/step':>10}{'peak RSS':>12}{'loss 0 -> last':>18}")
    names = {"ours": "ours (numpy backend)", "torch": f"PyTorch eager (HF {'Llama' if kv else 'GPT-2'})"}
    for which in ("torch", "ours"):
        s = summary[which]
        print(f"{names[which]:<28}{s['tokens_per_s']:>10.0f}{s['ms_per_step']:>10.0f}{s['peak_rss_mib']:>9.0f} MiB"
              f"{s['first_loss']:>9.3f} -> {s['last_loss']:.3f}")
    speed = summary["ours"]["tokens_per_s"] / summary["torch"]["tokens_per_s"]
    memory = summary["ours"]["peak_rss_mib"] / summary["torch"]["peak_rss_mib"]
    print(f"ratio: {speed:.2f}x PyTorch's tokens/s, {memory:.2f}x its peak memory (for comparison, llm.c reports "
          f"1.19x and 0.71x for its CUDA trainer against PyTorch)")
    return summary


if __name__ == "__main__":
    main()
