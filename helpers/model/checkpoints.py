"""Reading and writing GPT-2 weights: Hugging Face's layout (config.json + model.safetensors, which
`transformers.GPT2LMHeadModel.from_pretrained` reads) and llm.c's `gpt2_124M.bin`. No pickle: the
formats are plain tensors. Every file is written atomically (a temporary file, then a rename), so a
crash never leaves half a checkpoint."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .layout import GPT2Config, parameter_shapes

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
        return Path(snapshot_download(repo_id=str(name_or_path), allow_patterns=["config.json", "model.safetensors"]))
    except Exception as e:  # offline, unknown name, hub down
        raise FileNotFoundError(
            f"could not get {name_or_path!r} from the Hugging Face hub ({type(e).__name__}: {e}). Without internet, "
            f"download it elsewhere (huggingface-cli download {name_or_path} config.json model.safetensors) and pass "
            f"the directory") from e


def load_hf(name_or_path):
    """(GPT2Config, llm.c-layout tensors) from a Hugging Face GPT-2 directory or hub name."""
    from safetensors.numpy import load_file

    path = _resolve_hf(name_or_path)
    for f in ("config.json", "model.safetensors"):
        if not (path / f).is_file():
            raise FileNotFoundError(f"{path} has no {f}: a Hugging Face GPT-2 directory has config.json and "
                                    f"model.safetensors")
    hf = json.loads((path / "config.json").read_text())
    if hf.get("model_type", "gpt2") != "gpt2":
        raise ValueError(f"{path}/config.json describes a {hf.get('model_type')!r} model, not gpt2")
    if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"{path}: activation {hf['activation_function']!r}; this model implements GPT-2's tanh GELU")
    if abs(hf.get("layer_norm_epsilon", 1e-5) - 1e-5) > 1e-12:
        raise ValueError(f"{path}: layer_norm_epsilon {hf['layer_norm_epsilon']}; this model uses 1e-5")
    config = GPT2Config(vocab_size=hf["vocab_size"], block_size=hf.get("n_positions", hf.get("n_ctx")),
                        n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"])
    raw = load_file(str(path / "model.safetensors"))
    raw = {k.removeprefix("transformer."): v for k, v in raw.items()}
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


def save_hf(model, directory) -> Path:
    """config.json + model.safetensors that transformers.GPT2LMHeadModel.from_pretrained loads."""
    from safetensors.numpy import save_file
    cfg, st = model.config, model.state()
    directory = Path(directory)
    out = {"transformer.wte.weight": st["wte"][:cfg.vocab_size], "transformer.wpe.weight": st["wpe"],
           "transformer.ln_f.weight": st["lnfw"], "transformer.ln_f.bias": st["lnfb"]}
    for ours, theirs in HF_LAYER_NAMES.items():
        for l in range(cfg.n_layer):
            t = st[ours][l]
            out[f"transformer.h.{l}.{theirs}"] = t.T if ours in TRANSPOSED else t
    out = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.vocab_size,
              "n_positions": cfg.block_size, "n_ctx": cfg.block_size, "n_embd": cfg.n_embd, "n_layer": cfg.n_layer,
              "n_head": cfg.n_head, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
              "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "tie_word_embeddings": True,
              "bos_token_id": min(50256, cfg.vocab_size - 1), "eos_token_id": min(50256, cfg.vocab_size - 1)}
    atomic_write(directory / "model.safetensors", lambda p: save_file(out, str(p), metadata={"format": "pt"}))
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
