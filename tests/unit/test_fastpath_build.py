"""The fast path's C builds warning-free (C11, -Wall -Wextra -Werror) with gcc and clang, and
the package says clearly when it was installed without it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from relay import fastpath
from tests.conftest import require

SRC = Path(fastpath.__file__).resolve().parent
FILES = sorted(SRC.glob("*.c"))


@pytest.mark.parametrize("cc", ["gcc", "clang"])
def test_c_sources_are_warning_free(cc: str) -> None:
    require(shutil.which(cc) is not None, f"the C compiler {cc}")
    assert {f.name for f in FILES} >= {"satp.c", "replay.c", "offload.c", "engine.c", "rtp.c"}
    for f in FILES:
        out = subprocess.run([cc, "-std=c11", "-Wall", "-Wextra", "-Werror", "-O2",
                              "-D_GNU_SOURCE", "-pthread", "-fsyntax-only", str(f)],
                             capture_output=True, text=True)
        assert out.returncode == 0, f"{cc} {f.name}:\n{out.stderr}"


def test_missing_extension_is_reported_not_raised() -> None:
    """Without the compiled module the package imports, says why, and refuses politely."""
    code = (
        "import sys, builtins\n"
        "real = builtins.__import__\n"
        "def imp(name, *a, **k):\n"
        "    if name.endswith('_fastpath') or (a and a[2] and '_fastpath' in a[2]):\n"
        "        raise ImportError('simulated: not built')\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = imp\n"
        "import relay.fastpath as f\n"
        "assert not f.available()\n"
        "print(f.unavailable_reason())\n"
        "from relay.tunnel.fastplane import create_dataplane\n"
        "assert create_dataplane(object()) is None\n"
        "try:\n"
        "    f.SatpCrypto(None, None, 0)\n"
        "except f.FastpathError as e:\n"
        "    print('refused:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "not built" in out.stdout and "libssl-dev" in out.stdout
    assert "refused:" in out.stdout
