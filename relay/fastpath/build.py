"""cffi build script (API mode, out-of-line) for relay.fastpath._fastpath.

setup.py builds it as an optional extension: without a C compiler or OpenSSL headers the
package still installs and the tunnel runs on the Python data plane.
`python relay/fastpath/build.py` builds it in place for development.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import cffi

HERE = Path(__file__).resolve().parent
SOURCES = ("cipher.c", "cipher_x86.c", "cipher_openssl.c", "satp.c", "replay.c", "offload.c",
           "engine.c", "rtp.c", "anycast_framing.c",
           "lpm.c", "mactab.c", "stream.c", "hub.c", "hub_core.c", "hub_io.c")
HEADERS = ("cipher.h", "fastpath.h", "internal.h", "hub.h")
C_FLAGS = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-O2", "-D_GNU_SOURCE", "-pthread",
           "-fvisibility=hidden", "-fno-strict-aliasing"]

# fastpath.h is the one declaration of the API; cffi gets its declarations from it.
sys.path.insert(0, str(HERE.parent.parent))  # the project root, also when run as a script
from aarp.cdef import cdef_from_header  # noqa: E402

CDEF = cdef_from_header((HERE / "fastpath.h").read_text())



def _relative(path: Path) -> str:
    """setuptools wants sources relative to the project root (setup.py's directory)."""
    try:
        return os.path.relpath(path, Path.cwd())
    except ValueError:
        return str(path)


ffibuilder = cffi.FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "relay.fastpath._fastpath",
    '#include "fastpath.h"',
    sources=[_relative(HERE / s) for s in SOURCES],
    depends=[_relative(HERE / h) for h in HEADERS],
    include_dirs=[_relative(HERE)],
    extra_compile_args=C_FLAGS,
    extra_link_args=["-pthread"],
)

if __name__ == "__main__":
    os.chdir(HERE.parent.parent)
    ffibuilder.compile(tmpdir="build/fastpath", verbose=True)
