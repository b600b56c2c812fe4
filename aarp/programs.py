"""What kind of program a file is, for aarp-shim to pick how to reach it (pure reading of the
ELF headers): a dynamically linked program takes LD_PRELOAD; a static binary has no dynamic
loader and a Go program makes its own system calls, so both need seccomp supervision; a
set-user-ID program is reachable by neither."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

PT_INTERP = 3
GO_SECTIONS = (b".go.buildinfo", b".note.go.buildid", b".gopclntab")


@dataclass(frozen=True)
class Program:
    path: str
    elf: bool = False
    static: bool = False
    go: bool = False
    setuid: bool = False

    @property
    def needs_seccomp(self) -> bool:
        return self.elf and (self.static or self.go)

    @property
    def why(self) -> str:
        return "a Go program" if self.go else "a static binary" if self.static else "dynamic"


def _elf(data: bytes) -> tuple[bool, bool] | None:
    """(static, go) of an ELF image's first bytes, or None if it is not ELF."""
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] not in (1, 2) or data[5] not in (1, 2):
        return None
    wide, end = data[4] == 2, "<" if data[5] == 1 else ">"
    if wide:
        phoff, shoff = struct.unpack_from(end + "QQ", data, 0x20)
        phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from(end + "HHHHH", data,
                                                                          0x36)
    else:
        phoff, shoff = struct.unpack_from(end + "II", data, 0x1C)
        phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from(end + "HHHHH", data,
                                                                          0x2A)
    e_type = struct.unpack_from(end + "H", data, 0x10)[0]
    if e_type not in (2, 3) or not phnum or phoff + phnum * phentsize > len(data):
        return None  # not an executable whose headers we can read: judge nothing
    interp = False
    for i in range(phnum):
        off = phoff + i * phentsize
        if off + 4 <= len(data) and struct.unpack_from(end + "I", data, off)[0] == PT_INTERP:
            interp = True
    go = False
    if shnum and shstrndx < shnum and shoff + shnum * shentsize <= len(data):
        def section(i: int) -> tuple[int, int, int]:
            base = shoff + i * shentsize
            name = struct.unpack_from(end + "I", data, base)[0]
            if wide:
                offset, size = struct.unpack_from(end + "QQ", data, base + 0x18)
            else:
                offset, size = struct.unpack_from(end + "II", data, base + 0x10)
            return name, offset, size
        _, stroff, strsize = section(shstrndx)
        names = data[stroff:stroff + strsize]
        for i in range(shnum):
            name = section(i)[0]
            if names[name:name + 20].split(b"\0", 1)[0] in GO_SECTIONS:
                go = True
    return not interp, go


def inspect(path: str, limit: int = 64 << 20) -> Program:
    """What `path` is; a script (#!) is judged by its interpreter (unless that is env)."""
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            data = f.read(limit)
    except OSError:
        return Program(path)
    setuid = bool((st.st_mode & 0o4000 and st.st_uid != os.geteuid())
                  or (st.st_mode & 0o2000 and st.st_gid != os.getegid()))
    if data.startswith(b"#!"):
        interp = data[2:].split(b"\n", 1)[0].strip().split()
        if interp and os.path.basename(interp[0]) != b"env":
            inner = inspect(os.fsdecode(interp[0]), limit)
            return Program(path, inner.elf, inner.static, inner.go, setuid or inner.setuid)
        return Program(path, setuid=setuid)
    kind = _elf(data)
    if kind is None:
        return Program(path, setuid=setuid)
    return Program(path, True, kind[0], kind[1], setuid)
