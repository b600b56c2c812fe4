"""What aarp-shim decides from a program's file (ELF headers), and the host cache daemon's
request parsing: pure functions, hostile input included."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aarp import cache_daemon, programs


def test_dynamic_static_script_and_garbage(tmp_path: Path) -> None:
    ls = programs.inspect(shutil.which("ls") or "/bin/ls")
    assert ls.elf and not ls.static and not ls.go and not ls.needs_seccomp
    if shutil.which("gcc"):
        src = tmp_path / "s.c"
        src.write_text("int main(void) { return 0; }\n")
        exe = tmp_path / "s"
        built = subprocess.run(["gcc", "-static", str(src), "-o", str(exe)],
                               capture_output=True)
        if built.returncode == 0:
            kind = programs.inspect(str(exe))
            assert kind.static and kind.needs_seccomp and kind.why == "a static binary"
    script = tmp_path / "script"
    script.write_text(f"#!{sys.executable}\nprint(1)\n")
    assert programs.inspect(str(script)).elf  # judged by its interpreter (dynamic)
    env_script = tmp_path / "env-script"
    env_script.write_text("#!/usr/bin/env python3\n")
    assert not programs.inspect(str(env_script)).elf
    for data in (b"", b"\x7fELF", b"\x7fELF" + bytes(60), b"\x7fELF\x02\x01" + b"\xff" * 200,
                 os.urandom(4096)):
        junk = tmp_path / "junk"
        junk.write_bytes(data)
        assert not programs.inspect(str(junk)).needs_seccomp
    assert programs.inspect(str(tmp_path / "missing")) == programs.Program(
        str(tmp_path / "missing"))


def test_go_binaries_are_recognised() -> None:
    go = shutil.which("go")
    if go is None:
        pytest.skip("needs the program 'go' (golang-go)")
    real = os.path.realpath(go)
    assert programs.inspect(real).go and programs.inspect(real).needs_seccomp


@pytest.mark.parametrize("data, want", [
    (b"AARQ\x01\x01\x06\x00" + bytes(15) + b"\x01", (1, "::1")),
    (b"AARQ\x01\x02\x04\x00" + bytes([10, 255, 0, 1]) + bytes(12), (2, "10.255.0.1")),
    (b"AARQ\x02\x01\x06\x00" + bytes(16), None),  # version
    (b"AARQ\x01\x03\x06\x00" + bytes(16), None),  # kind
    (b"AARQ\x01\x01\x05\x00" + bytes(16), None),  # family
    (b"AARX\x01\x01\x06\x00" + bytes(16), None),  # magic
    (b"AARQ\x01\x01\x06\x00" + bytes(15), None),  # short
    (b"", None),
])
def test_daemon_requests(data: bytes, want: tuple[int, str] | None) -> None:
    assert cache_daemon.parse_request(data) == want
