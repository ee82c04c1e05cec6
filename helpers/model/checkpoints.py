"""Reading and writing weights: Hugging Face's layouts of GPT-2 and Llama (config.json plus
model.safetensors, or safetensors shards listed in model.safetensors.index.json: what
`transformers.GPT2LMHeadModel` / `LlamaForCausalLM.from_pretrained` read and `save_pretrained` writes)
and llm.c's `gpt2_124M.bin`. No pickle: the formats are plain tensors. Every file is written atomically
(a temporary file, then a rename), so a crash never leaves half a file."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .layout import GPT2Config, LlamaConfig, llama_parameter_shapes, parameter_shapes

SINGLE_FILE, INDEX = "model.safetensors", "model.safetensors.index.json"

LLMC_MAGIC, LLMC_FP32, LLMC_BF16 = 20240326, 3, 5

# Hugging Face's name for each of our tensors (per layer with {l}); their Conv1D weights are (in, out).
HF_LAYER_NAMES = {
    "ln1w": "ln_1.weight", "ln1b": "ln_1.bias", "qkvw": "attn.c_attn.weight", "qkvb": "attn.c_attn.bias",
    "attprojw": "attn.c_proj.weight", "attprojb": "attn.c_proj.bias", "ln2w": "ln_2.weight", "ln2b": "ln_2.bias",
    "fcw": "mlp.c_fc.weight", "fcb": "mlp.c_fc.bias", "fcprojw": "mlp.c_proj.weight", "fcprojb": "mlp.c_proj.bias",
}
TRANSPOSED = ("qkvw", "attprojw", "fcw", "fcprojw")


def atomic_write(path: Path, write) -> Path:
    """Call write(tmp_path), then rename the temporary file over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ------------------------------------------------------------------------------------------------
# Hugging Face layout
# ------------------------------------------------------------------------------------------------
def _resolve_hf(name_or_path) -> Path:
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.exists() or os.sep in str(name_or_path) or str(name_or_path).startswith("."):
        raise FileNotFoundError(f"{name_or_path}: not a directory with config.json and model.safetensors")
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(repo_id=str(name_or_path), allow_patterns=["config.json", "*.safetensors", INDEX]))
    except Exception as e:  # offline, unknown name, hub down
        raise FileNotFoundError(
            f"could not get {name_or_path!r} from the Hugging Face hub ({type(e).__name__}: {e}). Without internet, "
            f"download it elsewhere (huggingface-cli download {name_or_path} config.json model.safetensors) and pass "
            f"the directory") from e


def read_config(path: Path, model_type: str, hint: str) -> dict:
    """config.json of a Hugging Face directory, which must describe a `model_type` model."""
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json: a Hugging Face model directory has config.json and "
                                f"model.safetensors (or shards and {INDEX})")
    hf = json.loads((path / "config.json").read_text())
    if hf.get("model_type", model_type) != model_type:
        raise ValueError(f"{path}/config.json describes a {hf.get('model_type')!r} model, not {model_type} ({hint})")
    return hf


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a Hugging Face directory: model.safetensors, or the shards its index lists."""
    from safetensors.numpy import load_file
    if (path / SINGLE_FILE).is_file():
        return load_file(str(path / SINGLE_FILE))
    if not (path / INDEX).is_file():
        raise FileNotFoundError(f"{path} has no {SINGLE_FILE} and no {INDEX}: a Hugging Face model directory holds its "
                                f"weights in one of them")
    try:
        weight_map = json.loads((path / INDEX).read_text())["weight_map"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}/{INDEX} is not a safetensors index (no weight_map: {e})") from e
    tensors = {}
    for shard in sorted(set(weight_map.values())):
        if not (path / shard).is_file():
            raise FileNotFoundError(f"{path}/{INDEX} lists the shard {shard}, which is missing: download it again")
        tensors.update(load_file(str(path / shard)))
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
        raise ValueError(f"{path}: {INDEX} maps {missing[:3]} to shards that do not hold them")
    return tensors


def write_safetensors(directory: Path, tensors: dict[str, np.ndarray], max_shard_size: int | None = None):
    """tensors as model.safetensors, or (max_shard_size bytes) as Hugging Face's shards
    model-0000i-of-0000n.safetensors, each at most that size unless one tensor is larger, and their index.
    Each file is atomic; the index is written after its shards, and files of an earlier save that the
    new one does not use are removed last."""
    from safetensors.numpy import save_file
    directory = Path(directory)
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    if max_shard_size is None:
        atomic_write(directory / SINGLE_FILE, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
        keep = {SINGLE_FILE}
    else:
        if isinstance(max_shard_size, bool) or not isinstance(max_shard_size, (int, np.integer)) or max_shard_size < 1:
            raise ValueError(f"max_shard_size must be a positive number of bytes, got {max_shard_size!r}")
        shards, size = [[]], 0
        for k, t in tensors.items():
            if shards[-1] and size + t.nbytes > max_shard_size:
                shards.append([])
                size = 0
            shards[-1].append(k)
            size += t.nbytes
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        for name, keys in zip(names, shards):
            part = {k: tensors[k] for k in keys}
            atomic_write(directory / name, lambda p, part=part: save_file(part, str(p), metadata={"format": "pt"}))
        index = {"metadata": {"total_size": int(sum(t.nbytes for t in tensors.values()))},
                 "weight_map": {k: name for name, keys in zip(names, shards) for k in keys}}
        atomic_write(directory / INDEX, lambda p: p.write_text(json.dumps(index, indent=2)))
        keep = set(names) | {INDEX}
    stale = [directory / SINGLE_FILE, directory / INDEX, *directory.glob("model-*-of-*.safetensors")]
    for f in stale:
        if f.name not in keep:
            f.unlink(missing_ok=True)


def load_hf(name_or_path):
    """(GPT2Config, llm.c-layout tensors) from a Hugging Face GPT-2 directory or hub name."""
    path = _resolve_hf(name_or_path)
    hf = read_config(path, "gpt2", "a Llama checkpoint loads with helpers.model.llama.Llama.from_pretrained, "
                                   "or --model llama in training")
    if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"{path}: activation {hf['activation_function']!r}; this model implements GPT-2's tanh GELU")
    if abs(hf.get("layer_norm_epsilon", 1e-5) - 1e-5) > 1e-12:
        raise ValueError(f"{path}: layer_norm_epsilon {hf['layer_norm_epsilon']}; this model uses 1e-5")
    config = GPT2Config(vocab_size=hf["vocab_size"], block_size=hf.get("n_positions", hf.get("n_ctx")),
                        n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"])
    raw = {k.removeprefix("transformer."): v for k, v in read_safetensors(path).items()}
    L = config.n_layer

    def take(name):
        if name not in raw:
            raise ValueError(f"{path}/model.safetensors has no tensor {name!r}")
        return raw[name].astype(np.float32)

    tensors = {"wte": take("wte.weight"), "wpe": take("wpe.weight"), "lnfw": take("ln_f.weight"),
               "lnfb": take("ln_f.bias")}
    for ours, theirs in HF_LAYER_NAMES.items():
        layers = [take(f"h.{l}.{theirs}") for l in range(L)]
        tensors[ours] = np.stack([t.T if ours in TRANSPOSED else t for t in layers]) if L else np.zeros(
            (0,) + parameter_shapes(config)[ours][1:], np.float32)
    if "lm_head.weight" in raw and not np.array_equal(raw["lm_head.weight"], raw["wte.weight"]):
        raise ValueError(f"{path}: lm_head.weight differs from wte.weight; GPT-2 ties them")
    expected = parameter_shapes(config)
    for k, t in tensors.items():
        want = (config.vocab_size, config.n_embd) if k == "wte" else expected[k]
        if t.shape != want:
            raise ValueError(f"{path}: tensor {k} has shape {t.shape}, but config.json implies {want}")
    return config, tensors


def save_hf(model, directory, max_shard_size: int | None = None) -> Path:
    """config.json + model.safetensors (or shards) that transformers.GPT2LMHeadModel.from_pretrained loads."""
    cfg, st = model.config, model.state()
    directory = Path(directory)
    out = {"transformer.wte.weight": st["wte"][:cfg.vocab_size], "transformer.wpe.weight": st["wpe"],
           "transformer.ln_f.weight": st["lnfw"], "transformer.ln_f.bias": st["lnfb"]}
    for ours, theirs in HF_LAYER_NAMES.items():
        for l in range(cfg.n_layer):
            t = st[ours][l]
            out[f"transformer.h.{l}.{theirs}"] = t.T if ours in TRANSPOSED else t
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.vocab_size,
              "n_positions": cfg.block_size, "n_ctx": cfg.block_size, "n_embd": cfg.n_embd, "n_layer": cfg.n_layer,
              "n_head": cfg.n_head, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
              "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "tie_word_embeddings": True,
              "bos_token_id": min(50256, cfg.vocab_size - 1), "eos_token_id": min(50256, cfg.vocab_size - 1)}
    write_safetensors(directory, out, max_shard_size)
    atomic_write(directory / "config.json", lambda p: p.write_text(json.dumps(config, indent=2)))
    return directory


# ------------------------------------------------------------------------------------------------
# Hugging Face's Llama layout (LlamaForCausalLM)
# ------------------------------------------------------------------------------------------------
# Our stacked tensor for each of Hugging Face's per-layer names: q, k, v are rows of one qkvw, gate and
# up rows of one fcw (Linear weights are (out, in) in both, no transposes).
LLAMA_LAYER_NAMES = {"rms1w": ["input_layernorm.weight"],
                     "qkvw": ["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"],
                     "attprojw": ["self_attn.o_proj.weight"], "rms2w": ["post_attention_layernorm.weight"],
                     "fcw": ["mlp.gate_proj.weight", "mlp.up_proj.weight"], "fcprojw": ["mlp.down_proj.weight"]}


def llama_config_from_hf(hf: dict, path) -> LlamaConfig:
    """Our LlamaConfig from a config.json, refusing what this model does not implement. RoPE's settings
    are `rope_theta` and `rope_scaling` up to transformers 4, `rope_parameters` from transformers 5."""
    ropes = [r for r in (hf.get("rope_parameters"), hf.get("rope_scaling")) if r]
    scaled = [r for r in ropes if r.get("rope_type", r.get("type", "default")) != "default"]
    rope = ropes[0] if ropes else {}
    unsupported = [(hf.get("hidden_act", "silu") != "silu", f"hidden_act {hf.get('hidden_act')!r} (this model's MLP "
                                                              f"is SwiGLU: silu)"),
                   (bool(hf.get("attention_bias")), "attention_bias (this model has no biases)"),
                   (bool(hf.get("mlp_bias")), "mlp_bias (this model has no biases)"),
                   (bool(scaled), f"RoPE {scaled[0] if scaled else ''}: only plain RoPE is implemented, not scaled frequencies (such as Llama 3.1's)")]
    for bad, what in unsupported:
        if bad:
            raise ValueError(f"{path}/config.json: {what}")
    n_head = hf["num_attention_heads"]
    theta = hf.get("rope_theta") or rope.get("rope_theta") or 10000.0
    return LlamaConfig(vocab_size=hf["vocab_size"], block_size=hf.get("max_position_embeddings", 2048),
                       n_layer=hf["num_hidden_layers"], n_head=n_head,
                       n_kv_head=hf.get("num_key_value_heads") or n_head, n_embd=hf["hidden_size"],
                       intermediate_size=hf["intermediate_size"],
                       head_dim=hf.get("head_dim") or hf["hidden_size"] // n_head,
                       rope_theta=float(theta), rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                       tie_embeddings=bool(hf.get("tie_word_embeddings", False)))


def load_hf_llama(name_or_path):
    """(LlamaConfig, tensors in our layout) from a Hugging Face Llama directory or hub name."""
    path = _resolve_hf(name_or_path)
    config = llama_config_from_hf(read_config(path, "llama", "a GPT-2 checkpoint loads with GPT2.from_pretrained"),
                                  path)
    raw = read_safetensors(path)

    def take(name):
        if name not in raw:
            raise ValueError(f"{path}: the checkpoint has no tensor {name!r}")
        return raw[name].astype(np.float32)

    tensors = {"wte": take("model.embed_tokens.weight"), "rmsfw": take("model.norm.weight")}
    for ours, theirs in LLAMA_LAYER_NAMES.items():
        tensors[ours] = np.stack([np.concatenate([take(f"model.layers.{l}.{n}") for n in theirs])
                                  for l in range(config.n_layer)])
    if config.tie_embeddings:
        if "lm_head.weight" in raw and not np.array_equal(raw["lm_head.weight"], raw["model.embed_tokens.weight"]):
            raise ValueError(f"{path}: tie_word_embeddings is true but lm_head.weight differs from the embedding")
    else:
        tensors["lm_head"] = take("lm_head.weight")
    expected = llama_parameter_shapes(config)
    for k, t in tensors.items():
        want = (config.vocab_size, config.n_embd) if k in ("wte", "lm_head") else expected[k]
        if t.shape != want:
            raise ValueError(f"{path}: tensor {k} has shape {t.shape}, but config.json implies {want}")
    return config, tensors


def save_hf_llama(model, directory, max_shard_size: int | None = None) -> Path:
    """config.json + safetensors (one file, or shards of at most max_shard_size bytes and their index)
    that transformers.LlamaForCausalLM.from_pretrained loads."""
    cfg, st = model.config, model.state()
    directory = Path(directory)
    out = {"model.embed_tokens.weight": st["wte"][:cfg.vocab_size]}
    hd = cfg.head_dim
    splits = {"qkvw": [cfg.n_head * hd, cfg.n_kv_head * hd, cfg.n_kv_head * hd],
              "fcw": [cfg.intermediate_size, cfg.intermediate_size]}
    for l in range(cfg.n_layer):
        for ours, theirs in LLAMA_LAYER_NAMES.items():
            parts = np.split(st[ours][l], np.cumsum(splits[ours])[:-1]) if ours in splits else [st[ours][l]]
            for name, t in zip(theirs, parts):
                out[f"model.layers.{l}.{name}"] = t
    out["model.norm.weight"] = st["rmsfw"]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = st["lm_head"][:cfg.vocab_size]
    eot = min(50256, cfg.vocab_size - 1)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": cfg.vocab_size,
              "hidden_size": cfg.n_embd, "intermediate_size": cfg.intermediate_size,
              "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
              "num_key_value_heads": cfg.n_kv_head, "head_dim": hd, "max_position_embeddings": cfg.block_size,
              "rms_norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_theta,
              "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},  # (transformers 5's name)
              "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
              "tie_word_embeddings": cfg.tie_embeddings, "bos_token_id": eot, "eos_token_id": eot,
              "torch_dtype": "float32"}
    write_safetensors(directory, out, max_shard_size)
    atomic_write(directory / "config.json", lambda p: p.write_text(json.dumps(config, indent=2)))
    return directory


# ------------------------------------------------------------------------------------------------
# llm.c's gpt2_124M.bin
# ------------------------------------------------------------------------------------------------
def write_llmc(model, path) -> Path:
    """llm.c's model file: 256 int32 header [20240326, 3, maxT, V, L, NH, C, Vp, 0...], then the 16
    tensors in order as float32."""
    cfg = model.config
    header = np.zeros(256, np.int32)
    header[:8] = [LLMC_MAGIC, LLMC_FP32, cfg.block_size, cfg.vocab_size, cfg.n_layer, cfg.n_head, cfg.n_embd,
                  cfg.padded_vocab_size]
    params = device_to_host_flat(model)

    def write(p):
        with open(p, "wb") as f:
            f.write(header.tobytes())
            f.write(params.tobytes())
    return atomic_write(Path(path), write)


def device_to_host_flat(model) -> np.ndarray:
    """The parameters back to back in llm.c's order (the model's buffer pads between tensors)."""
    return np.concatenate([t.ravel() for t in model.state().values()]).astype(np.float32)


def read_llmc_header(path, magic: int, versions: dict, what: str):
    """(header, file bytes) of an llm.c file: 256 int32 of header (magic, version, ...), then data.
    `versions` maps the accepted version numbers to their names, for the error message."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}")
    data = path.read_bytes()
    if len(data) < 1024:
        raise ValueError(f"{path} is {len(data)} bytes, too short for the 1024-byte header of an {what}")
    header = np.frombuffer(data[:1024], np.int32)
    if header[0] != magic:
        raise ValueError(f"{path}: bad magic number {header[0]} ({what}s start with {magic})")
    if header[1] not in versions:
        known = ", ".join(f"{v} = {name}" for v, name in versions.items())
        raise ValueError(f"{path}: version {header[1]} unknown ({known})")
    return header, data


def read_llmc(path):
    """(GPT2Config, tensors) from an llm.c model file (fp32, or bf16 widened to fp32)."""
    header, data = read_llmc_header(path, LLMC_MAGIC, {LLMC_FP32: "fp32", LLMC_BF16: "bf16"}, "llm.c model file")
    maxT, V, L, NH, C, Vp = (int(x) for x in header[2:8])
    config = GPT2Config(vocab_size=V, block_size=maxT, n_layer=L, n_head=NH, n_embd=C)
    if config.padded_vocab_size != Vp and Vp < V:
        raise ValueError(f"{path}: padded vocabulary {Vp} is smaller than the vocabulary {V}")
    shapes = parameter_shapes(config)
    shapes["wte"] = (Vp, C)
    total = sum(int(np.prod(s)) for s in shapes.values())
    width = 4 if header[1] == LLMC_FP32 else 2
    if len(data) != 1024 + total * width:
        raise ValueError(f"{path}: {len(data) - 1024} bytes of parameters, but its header describes "
                         f"{total} parameters ({total * width} bytes)")
    if width == 4:
        flat = np.frombuffer(data, np.float32, offset=1024)
    else:  # bf16: the top 16 bits of a float32
        flat = (np.frombuffer(data, np.uint16, offset=1024).astype(np.uint32) << 16).view(np.float32)
    tensors, offset = {}, 0
    for k, s in shapes.items():
        n = int(np.prod(s))
        tensors[k] = flat[offset:offset + n].reshape(s).copy()
        offset += n
    tensors["wte"] = tensors["wte"][:V]
    return config, tensors
