"""Turn a C header into cffi declarations, so each C API is declared once, in its header.

cffi's cdef takes declarations and integer `#define`s but no other preprocessor lines or
attribute macros: those are dropped here.
"""

from __future__ import annotations

import re

_INT_DEFINE = re.compile(r"#\s*define\s+([A-Za-z_]\w*)\s+(-?\d+)\b")


def cdef_from_header(text: str, drop_tokens: tuple[str, ...] = ()) -> str:
    """Declarations of `text` for cffi.FFI.cdef; `drop_tokens` (e.g. a visibility macro) are
    removed wherever they stand."""
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            m = _INT_DEFINE.match(stripped)
            if m is None or m.group(1) in drop_tokens:
                continue
            line = f"#define {m.group(1)} {m.group(2)}"
        for token in drop_tokens:
            line = re.sub(rf"\b{token}\b\s*", "", line)
        lines.append(line)
    return "\n".join(lines)
