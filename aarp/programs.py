"""What kind of program a file is, for aarp-shim to pick how to reach it (pure reading of the
ELF headers): a dynamically linked program takes LD_PRELOAD; a static binary has no dynamic
loader and a Go program makes its own system calls, so both need seccomp supervision; a
set-user-ID program is reachable by neither."""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass
from typing import BinaryIO

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


class _Reader:
    """Reads ranges of a file, refusing absurd ones (a corrupt header must not make us read
    the world)."""

    LIMIT = 16 << 20

    def __init__(self, f: BinaryIO) -> None:
        self.f = f

    def read(self, offset: int, size: int) -> bytes:
        if offset < 0 or not 0 <= size <= self.LIMIT:
            return b""
        self.f.seek(offset)
        return self.f.read(size)


def _elf(f: BinaryIO) -> tuple[bool, bool] | None:
    """(static, go) of an ELF file, or None if it is not an ELF executable we can read."""
    r = _Reader(f)
    head = r.read(0, 64)
    if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] not in (1, 2) or head[5] not in (1, 2):
        return None
    wide, end = head[4] == 2, "<" if head[5] == 1 else ">"
    if wide:
        phoff, shoff = struct.unpack_from(end + "QQ", head, 0x20)
        phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from(end + "HHHHH", head,
                                                                          0x36)
    else:
        phoff, shoff = struct.unpack_from(end + "II", head, 0x1C)
        phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from(end + "HHHHH", head,
                                                                          0x2A)
    e_type = struct.unpack_from(end + "H", head, 0x10)[0]
    phdrs = r.read(phoff, phnum * phentsize)
    if e_type not in (2, 3) or not phnum or phentsize < 4 or len(phdrs) < phnum * phentsize:
        return None  # not an executable whose headers we can read: judge nothing
    interp = any(struct.unpack_from(end + "I", phdrs, i * phentsize)[0] == PT_INTERP
                 for i in range(phnum))
    go = False
    shdrs = r.read(shoff, shnum * shentsize)
    if shnum and shstrndx < shnum and shentsize >= 0x28 and len(shdrs) == shnum * shentsize:
        def section(i: int) -> tuple[int, int, int]:
            base = i * shentsize
            name = struct.unpack_from(end + "I", shdrs, base)[0]
            if wide:
                offset, size = struct.unpack_from(end + "QQ", shdrs, base + 0x18)
            else:
                offset, size = struct.unpack_from(end + "II", shdrs, base + 0x10)
            return name, offset, size

        _, stroff, strsize = section(shstrndx)
        names = r.read(stroff, strsize)
        for i in range(shnum):
            name = section(i)[0]
            if names[name:name + 20].split(b"\0", 1)[0] in GO_SECTIONS:
                go = True
    return not interp, go


def inspect(path: str, depth: int = 0) -> Program:
    """What `path` is; a script (#!) is judged by its interpreter (unless that is env)."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return Program(path)
        with open(path, "rb") as f:
            first = f.read(256)
            kind = _elf(f) if first.startswith(b"\x7fELF") else None
    except (OSError, struct.error):
        return Program(path)
    setuid = bool((st.st_mode & 0o4000 and st.st_uid != os.geteuid())
                  or (st.st_mode & 0o2000 and st.st_gid != os.getegid()))
    if first.startswith(b"#!") and depth < 4:
        interp = first[2:].split(b"\n", 1)[0].strip().split()
        if interp and os.path.basename(interp[0]) != b"env":
            inner = inspect(os.fsdecode(interp[0]), depth + 1)
            return Program(path, inner.elf, inner.static, inner.go, setuid or inner.setuid)
        return Program(path, setuid=setuid)
    if kind is None:
        return Program(path, setuid=setuid)
    return Program(path, True, kind[0], kind[1], setuid)
