"""`aarp-shim --seccomp`: run a program under the library's seccomp supervisor (C, in
libaarp.so), for programs LD_PRELOAD cannot reach (static binaries, Go programs)."""

from __future__ import annotations

import os
import sys

from aarp import shim


def unavailable() -> str | None:
    """Why this kernel cannot supervise a program, or None if it can."""
    ffi, lib = shim.ffi_and_lib()
    err = ffi.new("char[]", 512)
    return None if lib.aarp_supervise_available(err, 512) else ffi.string(err).decode()


def run(command: list[str]) -> int:
    """Run `command` supervised until it (and what it started) ends; its exit status.
    127 with a message when it could not be started."""
    ffi, lib = shim.ffi_and_lib()
    keep = [ffi.new("char[]", os.fsencode(a)) for a in command]
    argv = ffi.new("char *[]", [*keep, ffi.NULL])
    err = ffi.new("char[]", 512)
    sys.stdout.flush()
    sys.stderr.flush()
    rc = lib.aarp_supervise(argv, err, 512)
    if rc < 0:
        print(f"aarp-shim: {ffi.string(err).decode(errors='replace')}", file=sys.stderr)
        return 127
    return int(rc)
