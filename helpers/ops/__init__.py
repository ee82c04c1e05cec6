"""The operations of GPT-2 and of the Llama family (rmsnorm, rope, swiglu, gqa: notebook 11), one module
per op, each in the same shape (copy one to add the next).

An op `x` is two files, `cuda/x.cu` (the kernels, versions numbered 1, 2, ... like llm.c's
dev/cuda) and `helpers/ops/x.py`, which holds, in this order:

- a docstring with the math, the shapes, and a last line
  `Kernels: cuda/x.cu · notebook: notebooks/NN_x.ipynb · tests: tests/test_op_x.py`;
- `VERSIONS = {"forward": {1: "one line", 2: ...}, "backward": {...}}`: the op's steps (forward and
  backward; an op that nothing differentiates has only "forward", AdamW's step is "update", and
  grouped-query attention adds "decode", generation's cached step, whose wrapper takes its output
  first as forward's does) and,
  per step, one line per kernel version. The kernels are named `x_<step><N>`, with a `_part`
  suffix when a version takes several launches (the classifier, AdamW and the global norm keep
  llm.c's names: fused_classifier3, adamw2, global_norm3; their VERSIONS say which is which);
- the NumPy references `x_forward(inputs...) -> outputs` and `x_backward(grads..., dout, inputs...)`,
  readable, dtype-generic (float64 for finite differences), taking the wrapper's arguments in the
  wrapper's order;
- `module()`, the compiled `cuda/x.cu`;
- `launches(step, *args, version, **options) -> list[Launch]`: every check of that version's
  assumptions (a clear ValueError naming the kernel, the argument and the fix), then the launches
  in the order they run, not yet run. Tests race-check them (`device.racecheck(*launch)`),
  notebooks time them (`bench.measure(name, *launch)`);
- the wrappers `forward(out..., inputs..., version=V)` and `backward(grads..., dout, inputs...,
  version=V)`, each `run(launches(step, ...))`. The default version is the rule everywhere: the
  highest float32 version (the fastest; tests/test_ops_pattern.py asserts it). Versions whose line
  starts with "bf16:" take bf16 arrays and are asked for by number (common.float32_versions and
  bf16_versions tell them apart).

Conventions shared by all ops (used by the model in helpers.model):
- activations are C-contiguous float32 device arrays (helpers.device), shaped like llm.c: B
  (batch), T (time), C (channels), NH (heads), V (vocabulary); weights in PyTorch's (out, in) layout;
- in the bf16 versions (mixed precision, notebook 13) activations, their gradients and weights are
  bf16 (common.BF16, ml_dtypes' bfloat16), parameter gradients and statistics (mean, rstd, lse,
  losses) float32, and every computation float32: load, convert, compute, round once when storing;
- backward functions and kernels ACCUMULATE (+=) into every gradient they produce, as llm.c's
  train_gpt2.c does: the caller zeroes gradients first (the classifier, whose dlogits may overwrite
  the logits, writes instead; its docstring says why);
- the validators and limits live in `common.py`, one implementation behaving the same on both
  backends: a misaligned view is refused on the CPU as it would fault on a GPU.

cuda/README.md has the checklist for adding a kernel version or an op.
"""
