"""Reading `.cu` files: where they are, which kernels they declare, and with which C signatures.

Both backends use this: the launch of a kernel is validated against the parameter list parsed
here, before CuPy or the CPU backend sees it.
"""
from __future__ import annotations

import ast
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import ml_dtypes
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
CUDA_DIR = REPO_ROOT / "cuda"


def resolve(path_or_name) -> Path:
    """A path as given, or a bare file name inside `cuda/` (".cu" may be left out)."""
    p = Path(path_or_name)
    candidates = [p] if (p.is_absolute() or len(p.parts) > 1) else [CUDA_DIR / p, p]
    for c in list(candidates):
        if c.suffix == "":
            candidates.append(c.with_suffix(".cu"))
    for c in candidates:
        if c.is_file():
            return c.resolve()
    raise FileNotFoundError(
        f"no kernel file {str(path_or_name)!r}: looked for {', '.join(str(c) for c in candidates)}. "
        f"Give a path, or the name of a file in {CUDA_DIR}."
    )


def strip_comments(src: str) -> str:
    """Comments replaced by spaces, newlines kept (so line numbers stay right); strings kept."""
    out, i, n = [], 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif src.startswith("/*", i):
            j = src.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("".join(ch if ch == "\n" else " " for ch in src[i:j]))
            i = j
        elif c in "\"'":
            j = i + 1
            while j < n and src[j] != c:
                j += 2 if src[j] == "\\" else 1
            out.append(src[i : j + 1])
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


_INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)


def find_include(path: Path, name: str) -> Path | None:
    """The file `#include "name"` in `path` means: next to it, then in cuda/; None if neither has it."""
    return next((f for f in ((base / name).resolve() for base in (path.parent, CUDA_DIR)) if f.is_file()), None)


def local_includes(path: Path, seen=None) -> list[Path]:
    """Files pulled in with #include "..." (relative to the file, then cuda/), recursively."""
    seen = [] if seen is None else seen
    for name in _INCLUDE.findall(strip_comments(path.read_text())):
        f = find_include(path, name)
        if f is not None and f not in seen:
            seen.append(f)
            local_includes(f, seen)
    return seen


_INCLUDE_LINE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"[^\n]*', re.M)
_PRAGMA_ONCE = re.compile(r"^[ \t]*#[ \t]*pragma[ \t]+once[^\n]*", re.M)


def inline_local_includes(path: Path, _seen=None) -> str:
    """The file's text (comments stripped) with every local `#include "..."` replaced by the included
    file's own text, recursively, between #line directives (so the compiler's messages still name
    the header and its line). A header is inlined once, as `#pragma once` or its include guard
    would have it. What the CPU backend compiles, so that its rewriting of `__shared__` reaches
    headers too, and what the signature parser reads, so that it sees a header's typedefs."""
    seen = set() if _seen is None else _seen
    text = _PRAGMA_ONCE.sub("", strip_comments(path.read_text()))
    out, pos = [], 0
    for m in _INCLUDE_LINE.finditer(text):
        found = find_include(path, m.group(1))
        if found is None:
            continue  # left to the compiler, which says it is missing
        line = text.count("\n", 0, m.start()) + 1
        out.append(text[pos:m.start()])
        if found not in seen:
            seen.add(found)
            out.append(f'#line 1 "{found}"\n{inline_local_includes(found, seen)}\n#line {line} "{path}"')
        pos = m.end()
    out.append(text[pos:])
    return "".join(out)


def source_digest(path: Path, extra: str = "") -> str:
    """Hash of a file, the files it includes and `extra`: editing any of them changes it."""
    h = hashlib.sha256(extra.encode())
    for f in [path, *local_includes(path)]:
        h.update(str(f).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:24]


# What makes a thread wait for others (so the kernel runs on fibers, not as a plain loop): barriers,
# every warp collective (`__shfl_down_sync`, `__reduce_add_sync`, `__match_any_sync`...), and the
# cooperative groups, whose methods are those collectives.
_SYNC = re.compile(r"\b(__syncthreads\w*|__syncwarp|__\w+_sync|__activemask|this_thread_block|tiled_partition|"
                   r"coalesced_threads|thread_block_tile|this_grid|cooperative_groups|"
                   # the warp matrix functions of <mma.h> (warp collectives too)
                   r"load_matrix_sync|store_matrix_sync|mma_sync|fill_fragment|nvcuda)\b|\b(?:cg|wmma)::")


_FUNCTION = re.compile(r"\b(?:__device__|__global__)\b[^;{}]*?\b(\w+)\s*\(")


def _function_bodies(text: str) -> dict[str, str]:
    """name -> body of every __device__ / __global__ function defined in `text` (comments stripped)."""
    bodies = {}
    for m in _FUNCTION.finditer(text):
        open_paren = m.end() - 1
        try:
            close_paren = _matching(text, open_paren, "(", ")")
        except ValueError:
            continue
        rest = text[close_paren + 1:]
        brace = re.match(r"[^;{]*\{", rest)
        if not brace:
            continue  # a declaration
        start = close_paren + 1 + brace.end() - 1
        try:
            bodies[m.group(1)] = bodies.get(m.group(1), "") + text[start:_matching(text, start, "{", "}") + 1]
        except ValueError:
            continue
    return bodies


def kernels_needing_fibers(path: Path) -> set[str]:
    """Functions that wait for other threads (barriers, warp collectives), directly or through the
    __device__ functions they call. The others run their threads as a plain loop, no fibers."""
    text = "\n".join(strip_comments(f.read_text()) for f in [path, *local_includes(path)])
    while (m := re.search(r"__launch_bounds__\s*\(", text)):   # not a function name (its parentheses nest)
        text = text[:m.start()] + " " + text[_matching(text, m.end() - 1, "(", ")") + 1:]
    bodies = _function_bodies(text)
    needs = {name for name, body in bodies.items() if _SYNC.search(body)}
    changed = True
    while changed:
        changed = False
        for name, body in bodies.items():
            if name not in needs and any(re.search(rf"\b{re.escape(c)}\s*[<(]", body) for c in needs):
                needs.add(name)
                changed = True
    return needs


def declared_name_expressions(path: Path) -> list[str]:
    """Template instantiations a file names in a `// name_expressions: a<float>, b<float, 4>` line."""
    exprs = []
    for line in path.read_text().splitlines():
        m = re.match(r"\s*//\s*name_expressions:\s*(.*)", line)
        if m:
            exprs += [e.strip() for e in split_top_level(m.group(1)) if e.strip()]
    return exprs


# ------------------------------------------------------------------------------------------------
# Kernel signatures
# ------------------------------------------------------------------------------------------------
_TYPEDEFS = {
    "int8_t": "signed char", "uint8_t": "unsigned char", "int16_t": "short", "uint16_t": "unsigned short",
    "int32_t": "int", "uint32_t": "unsigned int", "int64_t": "long", "uint64_t": "unsigned long",
    "size_t": "unsigned long", "ptrdiff_t": "long", "unsigned": "unsigned int", "signed": "int",
    "long int": "long", "long long int": "long long", "unsigned long int": "unsigned long",
    "unsigned long long int": "unsigned long long", "short int": "short", "unsigned short int": "unsigned short",
    "signed int": "int", "signed long": "long", "signed long long": "long long", "signed short": "short",
    "half": "__half", "half2": "__half2", "nv_bfloat16": "__nv_bfloat16", "nv_bfloat162": "__nv_bfloat162",
}

# C type -> (numpy dtype, number of scalars per element)
SCALAR_TYPES = {
    "float": (np.float32, 1), "double": (np.float64, 1), "int": (np.int32, 1), "unsigned int": (np.uint32, 1),
    "long": (np.int64, 1), "unsigned long": (np.uint64, 1), "long long": (np.int64, 1),
    "unsigned long long": (np.uint64, 1), "short": (np.int16, 1), "unsigned short": (np.uint16, 1),
    "char": (np.int8, 1), "signed char": (np.int8, 1), "unsigned char": (np.uint8, 1), "bool": (np.bool_, 1),
}
# CUDA's vector types, 1 to 4 components of every scalar type (char1 ... double4), and the 16-bit
# floats of cuda_fp16.h and cuda_bf16.h: NumPy's float16 and ml_dtypes' bfloat16 (CuPy's too).
_VECTOR_COMPONENTS = {"char": np.int8, "uchar": np.uint8, "short": np.int16, "ushort": np.uint16, "int": np.int32,
                      "uint": np.uint32, "long": np.int64, "ulong": np.uint64, "longlong": np.int64,
                      "ulonglong": np.uint64, "float": np.float32, "double": np.float64}
VECTOR_TYPES = {f"{name}{n}": (dtype, n) for name, dtype in _VECTOR_COMPONENTS.items() for n in (1, 2, 3, 4)}
VECTOR_TYPES.update({"__half": (np.float16, 1), "__half2": (np.float16, 2),
                     "__nv_bfloat16": (ml_dtypes.bfloat16, 1), "__nv_bfloat162": (ml_dtypes.bfloat16, 2)})


@dataclass
class Param:
    name: str
    ctype: str            # normalised, e.g. "const float*", "int"
    base: str             # "float", "float4", "void", ...
    pointer: bool
    const: bool           # pointee is const (pointers only)

    @property
    def dtype(self):
        """numpy dtype of the array (pointers) or value (scalars); None for void*."""
        if self.base == "void":
            return None
        return np.dtype(({**SCALAR_TYPES, **VECTOR_TYPES})[self.base][0])

    @property
    def vector_width(self) -> int:
        return VECTOR_TYPES.get(self.base, (None, 1))[1]


@dataclass
class Kernel:
    name: str                       # as given to get_function (a name expression for templates)
    params: list[Param]
    max_threads: int | None = None  # from __launch_bounds__
    line: int = 0
    template_params: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return f"{self.name}({', '.join(p.ctype + ' ' + p.name for p in self.params)})"


def split_top_level(text: str, sep: str = ",") -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "<([{":
            depth += 1
        elif ch in ">)]}":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        parts.append("".join(cur))
    return parts


def _matching(text: str, open_at: int, open_ch: str, close_ch: str) -> int:
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == open_ch:
            depth += 1
        elif text[i] == close_ch:
            depth -= 1
            if depth == 0:
                return i
    raise ValueError("unbalanced brackets")


def normalise_base(tokens: list[str]) -> str:
    base = " ".join(t for t in tokens if t not in ("const", "volatile", "struct", "__restrict__", "__restrict", "restrict"))
    return _TYPEDEFS.get(base, base)


def parse_param(text: str, index: int, substitutions: dict[str, str]) -> Param:
    tokens = re.findall(r"[A-Za-z_]\w*|\*|&|\d+", text)
    tokens = [substitutions.get(t, t) for t in tokens]
    tokens = " ".join(tokens).split()  # a substitution may be several words ("unsigned int")
    ident = [t for t in tokens if t not in ("*", "&")]
    name = f"arg{index}"
    known = set(SCALAR_TYPES) | set(VECTOR_TYPES) | set(_TYPEDEFS) | {"void", "const", "volatile", "unsigned", "signed",
                                                                       "long", "short", "int", "char", "__restrict__",
                                                                       "__restrict", "restrict"}
    if tokens and tokens[-1] not in ("*", "&") and len(ident) >= 2 and tokens[-1] not in known:
        name = tokens[-1]
        tokens = tokens[:-1]
    pointer = "*" in tokens
    before_star = tokens[: tokens.index("*")] if pointer else tokens
    const = pointer and "const" in before_star
    base = normalise_base([t for t in before_star if t != "&"])
    ctype = ("const " if const else "") + base + ("*" if pointer else "")
    return Param(name=name, ctype=ctype, base=base, pointer=pointer, const=const)


_GLOBAL = re.compile(r"\b__global__\b")


def parse_kernels(src: str) -> dict[str, dict]:
    """The `__global__` functions of a source: name -> {params text, template params, launch bounds, line}."""
    text = strip_comments(src)
    found, macros = {}, defines(text)
    for m in _GLOBAL.finditer(text):
        i = m.end()
        head = text[i : i + 400]
        head, bounds = _take_launch_bounds(head)
        before_global = re.search(r"__launch_bounds__\s*\(((?:[^()]|\([^()]*\))*)\)\s*$", text[max(0, m.start() - 200):m.start()])
        bounds = bounds or (before_global.group(1) if before_global else None)   # __launch_bounds__(n) __global__
        hm = re.match(r"\s*void\s+", head)
        if hm:
            rest, after = _take_launch_bounds(head[hm.end():])
            bounds = bounds or after
            head = head[:hm.end()] + rest
        hm = re.match(r"\s*void\s+(\w+)\s*\(", head)
        if not hm:
            continue
        name = hm.group(1)
        open_at = re.compile(rf"\b{name}\s*\(").search(text, i).end() - 1
        close_at = _matching(text, open_at, "(", ")")
        params_text = text[open_at + 1 : close_at]
        # template<...> right before (possibly with extern/static in between)
        before = text[max(0, m.start() - 600) : m.start()]
        tm = re.search(r"template\s*<([^;{}]*)>\s*(?:static\s+|inline\s+)*$", before)
        template_params = []
        if tm:
            for tp in split_top_level(tm.group(1)):
                words = re.findall(r"\w+", tp.split("=")[0])
                if words:
                    template_params.append(words[-1])
        max_threads = None
        if bounds:
            first = split_top_level(bounds)[0].strip()
            max_threads = constant_int(first, macros)
            if max_threads is None:
                max_threads = first   # a template parameter's expression: known per instantiation
        found[name] = dict(params=params_text, template_params=template_params, max_threads=max_threads,
                           line=text.count("\n", 0, m.start()) + 1)
    return found


def _take_launch_bounds(head: str) -> tuple[str, str | None]:
    """head without a leading `__launch_bounds__(...)` (parentheses balanced), and what was inside."""
    m = re.match(r"\s*__launch_bounds__\s*\(", head)
    if not m:
        return head, None
    close = _matching(head, m.end() - 1, "(", ")")
    return head[close + 1:], head[m.end():close]


_DEFINE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+([A-Za-z_]\w*)[ \t]+([^\n]+)$", re.M)


def defines(text: str) -> dict[str, str]:
    """The object-like macros of a source: NAME -> replacement text."""
    return {m.group(1): m.group(2).strip() for m in _DEFINE.finditer(text)}


def constant_int(expression: str, macros: dict[str, str]):
    """The value of an integer constant expression made of literals, macros and + - * / % << >> ( ),
    as the compiler computes it (C's truncating division); None if it is anything else."""
    def expand(m):
        return f"({macros[m.group(0)]})" if m.group(0) in macros else m.group(0)
    text = expression
    for _ in range(16):   # macros of macros
        new = re.sub(r"\b[A-Za-z_]\w*\b", expand, text)
        if new == text:
            break
        text = new
    text = re.sub(r"(\d+)[uUlL]+\b", r"\1", text)
    if not re.fullmatch(r"[\d\s+\-*/%()<>]*", text) or re.search(r"[<>]", text.replace("<<", "").replace(">>", "")):
        return None
    try:
        tree = ast.parse(text.replace("/", "//"), mode="eval")
    except SyntaxError:
        return None
    ops = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.FloorDiv: lambda a, b: int(a / b) if b else None, ast.Mod: lambda a, b: a - b * int(a / b) if b else None,
           ast.LShift: lambda a, b: a << b, ast.RShift: lambda a, b: a >> b}

    def value(node):
        if isinstance(node, ast.Expression):
            return value(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = value(node.operand)
            return None if v is None else (-v if isinstance(node.op, ast.USub) else v)
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            a, b = value(node.left), value(node.right)
            return None if a is None or b is None else ops[type(node.op)](a, b)
        return None

    return value(tree)


_TYPEDEF = re.compile(r"\btypedef\s+([^;{}()]+?)\s+([A-Za-z_]\w*)\s*;")
_USING = re.compile(r"\busing\s+([A-Za-z_]\w*)\s*=\s*([^;{}()]+?)\s*;")


def type_aliases(text: str) -> dict[str, str]:
    """`typedef float floatX;` and `using real = float;` of a source (macros expanded, aliases of
    aliases resolved): alias -> the type it names, as the compiler reads it."""
    macros = defines(text)
    aliases = {}
    for m in _TYPEDEF.finditer(text):
        aliases[m.group(2)] = m.group(1)
    for m in _USING.finditer(text):
        aliases[m.group(1)] = m.group(2)

    def resolve(t, depth=0):
        words = re.findall(r"[A-Za-z_]\w*|\*", t)
        out = []
        for w in words:
            if w in macros and depth < 8 and re.fullmatch(r"[A-Za-z_][\w\s*]*", macros[w]):
                out.append(resolve(macros[w], depth + 1))
            elif w in aliases and depth < 8 and aliases[w] != w:
                out.append(resolve(aliases[w], depth + 1))
            else:
                out.append(w)
        return " ".join(out)

    return {name: resolve(target) for name, target in aliases.items() if "[" not in target}


def kernel_signature(src: str, expression: str, path: str = "<source>") -> Kernel:
    """The Kernel for `name` or a template instantiation such as `softmax<float, 128>`."""
    kernels = parse_kernels(src)
    name, _, rest = expression.partition("<")
    name = name.strip()
    if name not in kernels:
        raise KeyError(f"no __global__ function {name!r} in {path}; it has: {', '.join(sorted(kernels)) or 'none'}")
    k = kernels[name]
    subs = {}
    if k["template_params"]:
        if not rest:
            raise KeyError(f"{name!r} in {path} is a template kernel: ask for an instantiation such as "
                           f"'{name}<{', '.join('float' for _ in k['template_params'])}>' and list it in name_expressions")
        args = [a.strip() for a in split_top_level(rest.rstrip().rstrip(">"))]
        subs = dict(zip(k["template_params"], args))
    aliases = {name: target for name, target in type_aliases(strip_comments(src)).items() if name not in _TYPEDEFS}
    params = [parse_param(p, i, {**aliases, **subs}) for i, p in enumerate(split_top_level(k["params"]))
              if p.strip() not in ("", "void")]
    bounds = k["max_threads"]
    if isinstance(bounds, str):
        bounds = constant_int(bounds, {**defines(strip_comments(src)), **subs})
    return Kernel(name=expression.strip(), params=params, max_threads=bounds, line=k["line"],
                  template_params=k["template_params"])


# ------------------------------------------------------------------------------------------------
# Module globals: __device__ and __constant__ variables
# ------------------------------------------------------------------------------------------------
@dataclass
class DeviceVariable:
    name: str
    base: str                 # the element's C type, normalised ("float", "int", "float4")
    shape: tuple[int, ...]    # () for a scalar

    @property
    def dtype(self):
        """The NumPy dtype of one element, or None for a type NumPy cannot describe (a struct)."""
        known = {**SCALAR_TYPES, **VECTOR_TYPES}
        if self.base not in known:
            return None
        scalar, width = known[self.base]
        return np.dtype(scalar) if width == 1 else np.dtype((scalar, (width,)))


_DEVICE_VARIABLE = re.compile(
    r"(?<![\w])(?:__device__\s+(?:__constant__\s+)?|__constant__\s+(?:__device__\s+)?)"
    r"(?P<decl>[^;(){}=]*?)\s+(?P<name>[A-Za-z_]\w*)\s*(?P<dims>(?:\[[^\]]*\]\s*)*)(?:=[^;]*)?;")


def device_variables(src: str) -> list[DeviceVariable]:
    """The file-scope `__device__` / `__constant__` variables of a source, in order (functions and
    `__shared__` declarations are not variables of the module)."""
    text = strip_comments(src)
    found = []
    depth, starts = 0, []
    for ch in text:  # only declarations at brace depth 0 (file scope)
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        starts.append(depth)
    for m in _DEVICE_VARIABLE.finditer(text):
        if starts[m.start()] != 0 or "__shared__" in m.group("decl"):
            continue
        tokens = m.group("decl").split()
        base = normalise_base([t for t in tokens if t not in ("static", "extern", "__managed__")])
        dims = tuple(int(d) for d in re.findall(r"\[\s*(\d+)\s*\]", m.group("dims")))
        found.append(DeviceVariable(m.group("name"), base, dims))
    return found
