"""Locate libaarp.so and reach its exported aarp_* API through cffi (ABI mode)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import cffi

# Declarations of shim_c/aarp.h that Python uses; tests check they are all exported.
CDEF = """
const char *aarp_version(void);
"""


class ShimNotBuilt(RuntimeError):
    """libaarp.so is missing: the package was not built/installed with its C part."""


def library_path() -> Path:
    """Absolute path of the preload library shipped inside this package."""
    path = Path(__file__).resolve().parent / "libaarp.so"
    if not path.is_file():
        raise ShimNotBuilt(
            f"{path} does not exist; reinstall the package (pip install .) so the C part is built"
        )
    return path


@functools.cache
def _loaded() -> tuple[cffi.FFI, object]:
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    # RTLD_NOW: a missing symbol shows up here, not at first use.
    lib = ffi.dlopen(str(library_path()), ffi.RTLD_NOW)
    return ffi, lib


def ffi_and_lib() -> tuple[cffi.FFI, object]:
    """The cffi FFI and the loaded library (loaded once per process)."""
    return _loaded()


def version() -> str:
    ffi, lib = _loaded()
    return ffi.string(lib.aarp_version()).decode()


def preload_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of `base` (default: os.environ) with libaarp.so first in LD_PRELOAD."""
    env = dict(os.environ if base is None else base)
    existing = env.get("LD_PRELOAD", "").strip()
    lib = str(library_path())
    env["LD_PRELOAD"] = f"{lib} {existing}".strip() if existing else lib
    return env
