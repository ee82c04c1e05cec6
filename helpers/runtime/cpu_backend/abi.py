"""The ctypes mirrors of gpt2cpu/abi.h, read from that header itself: the constants, the enums and the
structs a kernel module, the launcher and Python share are defined once, in C++.

Every module reports sizeof() of its structs when it is loaded, and the launcher is built from the
same header, so a layout that Python reads differently is an error, not a wrong result.
"""
from __future__ import annotations

import ctypes
import re
from pathlib import Path

HEADER = Path(__file__).with_name("gpt2cpu") / "abi.h"

_CTYPES = {"int32_t": ctypes.c_int32, "uint32_t": ctypes.c_uint32, "int64_t": ctypes.c_int64,
           "uint64_t": ctypes.c_uint64, "uint8_t": ctypes.c_uint8, "char": ctypes.c_char}


def _strip_comments(text: str) -> str:
    return re.sub(r"//[^\n]*", "", text)


def _parse(text: str):
    text = _strip_comments(text)
    constants: dict[str, int] = {}
    for m in re.finditer(r"constexpr\s+\w+\s+(k\w+)\s*=\s*([^;]+);", text):
        constants[m.group(1)] = int(eval(m.group(2), {"__builtins__": {}}, dict(constants)))  # integer literals
    for m in re.finditer(r"enum\s+\w+\s*:\s*\w+\s*\{([^}]*)\}", text):
        for item in m.group(1).split(","):
            name, _, value = item.partition("=")
            if name.strip():
                constants[name.strip()] = int(value.strip(), 0)
    structs: dict[str, type] = {}
    for m in re.finditer(r"struct\s+(\w+)\s*\{([^}]*)\};", text):
        fields = []
        for line in m.group(2).split(";"):
            line = " ".join(line.split())
            if not line:
                continue
            f = re.fullmatch(r"(\w+)\s*(\*{0,2})\s*(\w+)(?:\[(\w+)\])?", line)
            if not f:
                raise ValueError(f"{HEADER.name}: cannot read the field {line!r} of struct {m.group(1)}")
            kind, stars, name, count = f.groups()
            ctype = ctypes.c_void_p if stars else (structs[kind] if kind in structs else _CTYPES[kind])
            if count:
                ctype = ctype * (constants[count] if count in constants else int(count))
            fields.append((name, ctype))
        structs[m.group(1)] = type(m.group(1), (ctypes.Structure,), {"_fields_": fields})
    return constants, structs


CONSTANTS, STRUCTS = _parse(HEADER.read_text())
Report = STRUCTS["Report"]
LaunchConfig = STRUCTS["LaunchConfig"]
Window = STRUCTS["Window"]
GlobalSlot = STRUCTS["GlobalSlot"]
ArgSlot = STRUCTS["ArgSlot"]
LauncherRequest = STRUCTS["LauncherRequest"]
LauncherReply = STRUCTS["LauncherReply"]
globals().update({k: v for k, v in CONSTANTS.items()})
