"""The harnesses, how to build them and how to run them.

A C harness is fuzz/c/<name minus "c_">.c linked with the project sources it names, built
with clang under AddressSanitizer + UndefinedBehaviorSanitizer into build/fuzz/. A Python
harness is the module fuzz.py.<name minus "py_">, run by atheris. Both take libFuzzer's flags;
every run bounds the time (-timeout) and memory (-rss_limit_mb, and -malloc_limit_mb for C;
the Python harnesses also cap their address space) spent on one input, so a slow or greedy
input is a finding like a crash.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "fuzz"
BUILD = ROOT / "build" / "fuzz"
CORPUS = FUZZ / "corpus"
REGRESSIONS = FUZZ / "regressions"

CLANG = os.environ.get("FUZZ_CC", "clang")
SANITIZE = "address,undefined"
C_FLAGS = ["-std=c11", "-g", "-O1", "-fno-omit-frame-pointer", "-D_GNU_SOURCE", "-pthread",
           "-Wall", "-Wextra", "-Werror", "-fno-sanitize-recover=all"]
SHIM = ("shim_c/config.c", "shim_c/addr.c", "shim_c/real.c", "shim_c/log.c")


@dataclass(frozen=True)
class Harness:
    name: str
    kind: str                      # "c" or "py"
    what: str                      # the code under test, for people
    sources: tuple[str, ...] = ()  # C: project sources linked in
    libs: tuple[str, ...] = ()
    max_len: int = 4096
    timeout: int = 2               # seconds per input
    rss_mb: int = 512              # whole process (Python: on top of the interpreter)
    malloc_mb: int = 256           # one allocation (C only)
    needs_root: bool = False

    @property
    def source(self) -> Path:
        stem = self.name.split("_", 1)[1]
        return FUZZ / ("c" if self.kind == "c" else "py") / \
            (f"{stem}.c" if self.kind == "c" else f"{stem}.py")

    @property
    def corpus(self) -> Path:
        return CORPUS / self.name

    @property
    def regressions(self) -> Path:
        return REGRESSIONS / self.name

    @property
    def work(self) -> Path:
        return BUILD / "work" / self.name


HARNESSES = (
    Harness("c_shim_config", "c", "shim_c/config.c: the aarp.conf reader", SHIM, ("dl",),
            max_len=16384),
    Harness("c_shim_env", "c", "shim_c/config.c: the file plus AARP_* variables", SHIM,
            ("dl",), max_len=8192),
    Harness("c_shim_addr", "c", "shim_c/addr.c: addresses, prefixes, sockaddrs",
            ("shim_c/addr.c",), max_len=256),
    Harness("c_shim_message", "c", "shim_c/message.c: AARP messages",
            ("shim_c/message.c", "shim_c/sha256.c", "shim_c/addr.c"), max_len=1024),
    Harness("c_satp_open", "c", "relay/fastpath/satp.c: SATP open (and reseal)",
            ("relay/fastpath/satp.c", "relay/fastpath/cipher.c", "relay/fastpath/cipher_x86.c",
             "relay/fastpath/cipher_openssl.c"), ("dl",), max_len=2048),
    Harness("c_replay", "c", "relay/fastpath/replay.c: the replay window",
            ("relay/fastpath/replay.c",), max_len=8192),
    Harness("c_gso", "c", "relay/fastpath/offload.c: GSO segmentation",
            ("relay/fastpath/offload.c",), max_len=65600),
    Harness("c_gro", "c", "relay/fastpath/offload.c: GRO coalescing",
            ("relay/fastpath/offload.c",), max_len=65536),
    Harness("c_stream_framing", "c",
            "relay/fastpath/stream.c: the hub's stream framings (tcp, anycast-tcp)",
            ("relay/fastpath/stream.c", "relay/fastpath/anycast_framing.c"), max_len=16384),
    Harness("c_rtp", "c", "relay/fastpath/rtp.c: relay-mode forwarding and latching",
            ("relay/fastpath/rtp.c",), max_len=1024, timeout=10, needs_root=True),
    Harness("py_satp_open", "py", "relay.satp: SATP open (and reseal)", max_len=2048),
    Harness("py_replay", "py", "relay.satp.replay: the window, against the C one",
            max_len=4096),
    Harness("py_aarp_message", "py", "aarp.message: AARP messages", max_len=1024),
    Harness("py_aarp_config", "py", "aarp.config: aarp.conf plus AARP_* variables",
            max_len=8192),
    Harness("py_rtpproxy", "py", "relay.rtpproxy.protocol: rtpproxy commands", max_len=4096),
    Harness("py_anytun_sync", "py", "relay.satp.archive: anytun's sync archive codec",
            max_len=8192),
    Harness("py_records", "py", "relay.cluster.records: cluster records and their merge",
            max_len=4096),
    Harness("py_node_config", "py", "relay.tunnel.nodefile: the node's TOML file",
            max_len=8192),
    Harness("py_dataplane", "py", "relay.tunnel.dataplane: from_network / from_device",
            max_len=16384, timeout=5),
)
BY_NAME = {h.name: h for h in HARNESSES}


def select(names: list[str]) -> list[Harness]:
    """Harnesses by name or prefix ("c_", "py_"); all for no names."""
    if not names:
        return list(HARNESSES)
    out = [h for h in HARNESSES if any(h.name == n or h.name.startswith(n) for n in names)]
    unknown = [n for n in names if not any(h.name.startswith(n) for h in HARNESSES)]
    if unknown:
        raise SystemExit(f"unknown harness: {', '.join(unknown)} "
                         f"(known: {', '.join(h.name for h in HARNESSES)})")
    return out


# -- building -------------------------------------------------------------------------------------

def _digest(paths: list[Path], extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _headers(source: Path) -> list[Path]:
    return sorted(source.parent.glob("*.h"))


def _compile(src: Path) -> Path:
    flags = [*C_FLAGS, f"-fsanitize=fuzzer-no-link,{SANITIZE}"]
    key = _digest([src, *_headers(src)], " ".join(flags) + CLANG)
    obj = BUILD / "obj" / f"{src.stem}-{key}.o"
    if not obj.exists():
        obj.parent.mkdir(parents=True, exist_ok=True)
        tmp = obj.with_suffix(".tmp.o")
        subprocess.run([CLANG, *flags, "-c", str(src), "-o", str(tmp)], check=True)
        tmp.replace(obj)
    return obj


def build(h: Harness) -> Path:
    """The harness binary, compiled if its sources changed (safe to call concurrently)."""
    assert h.kind == "c"
    BUILD.mkdir(parents=True, exist_ok=True)
    with open(BUILD / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        objs = [_compile(h.source), *(_compile(ROOT / s) for s in h.sources)]
        key = _digest(objs, " ".join(h.libs))
        binary = BUILD / "bin" / f"{h.name}-{key}"
        if not binary.exists():
            binary.parent.mkdir(parents=True, exist_ok=True)
            for old in binary.parent.glob(f"{h.name}-*"):
                old.unlink()
            tmp = binary.with_suffix(".tmp")
            subprocess.run([CLANG, f"-fsanitize=fuzzer,{SANITIZE}", "-pthread",
                            *map(str, objs), *(f"-l{lib}" for lib in h.libs), "-o", str(tmp)],
                           check=True)
            tmp.replace(binary)
        return binary


def can_build() -> str | None:
    """Why the C harnesses cannot be built here, or None."""
    if not shutil.which(CLANG):
        return f"{CLANG} not found (Debian: clang)"
    probe = BUILD / "probe"
    probe.mkdir(parents=True, exist_ok=True)
    src = probe / "probe.c"
    src.write_text("#include <stddef.h>\n#include <stdint.h>\n"
                   "int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)"
                   " { (void)d; (void)n; return 0; }\n")
    r = subprocess.run([CLANG, f"-fsanitize=fuzzer,{SANITIZE}", str(src), "-o",
                        str(probe / "probe")], capture_output=True, text=True)
    if r.returncode:
        return f"{CLANG} cannot link libFuzzer (Debian: libclang-rt-14-dev): {r.stderr[-300:]}"
    return None


# -- running --------------------------------------------------------------------------------------

def command(h: Harness) -> list[str]:
    if h.kind == "c":
        return [str(build(h))]
    return [sys.executable, "-m", f"fuzz.py.{h.name[3:]}"]


def limits(h: Harness) -> list[str]:
    flags = [f"-timeout={h.timeout}", f"-rss_limit_mb={h.rss_mb + (0 if h.kind == 'c' else 256)}",
             f"-max_len={h.max_len}"]
    if h.kind == "c":
        flags.append(f"-malloc_limit_mb={h.malloc_mb}")
    return flags


def environment(h: Harness) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1:allocator_may_return_null=0")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if h.kind == "py":
        env["FUZZ_RSS_MB"] = str(h.rss_mb)
    return env


def inputs(h: Harness) -> list[Path]:
    return [d for d in (h.corpus, h.regressions) if d.is_dir() and any(d.iterdir())]


@dataclass
class Result:
    harness: Harness
    ok: bool
    execs: int = 0
    cov: int = 0
    ft: int = 0
    corpus: int = 0
    seconds: float = 0.0
    artifacts: tuple[str, ...] = ()
    tail: str = ""


_STATUS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+)(?: corp: (\d+))?", re.M)
_EXECS = re.compile(r"stat::number_of_executed_units: (\d+)")


def _parse(h: Harness, proc: subprocess.CompletedProcess, seconds: float) -> Result:
    out = proc.stdout + proc.stderr
    res = Result(h, proc.returncode == 0, seconds=seconds, tail=out[-4000:])
    found = _STATUS.findall(out)
    if found:
        n, cov, ft, corp = found[-1]
        res.execs, res.cov, res.ft, res.corpus = int(n), int(cov), int(ft), int(corp or 0)
    m = _EXECS.search(out)
    if m:
        res.execs = int(m.group(1))
    res.artifacts = tuple(a.group(1) for a in re.finditer(r"Test unit written to (\S+)", out))
    return res


def check(h: Harness, timeout: float = 120) -> Result:
    """One pass over the corpus and the regression inputs, no fuzzing (what `make test` runs)."""
    import tempfile
    import time
    with tempfile.TemporaryDirectory(prefix="fuzz-check-") as tmp:
        cmd = [*command(h), *limits(h), "-runs=0", f"-artifact_prefix={tmp}/",
               *map(str, inputs(h))]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=environment(h),
                              cwd=ROOT, timeout=timeout)
        return _parse(h, proc, time.monotonic() - t0)


def fuzz(h: Harness, seconds: int, jobs: int = 1) -> Result:
    """Fuzz for `seconds`; new crashes, hangs and memory hogs land in fuzz/regressions/<h>/,
    new coverage in build/fuzz/work/<h>/ (`python -m fuzz merge` adds it to the corpus)."""
    import time
    h.work.mkdir(parents=True, exist_ok=True)
    h.regressions.mkdir(parents=True, exist_ok=True)
    cmd = [*command(h), *limits(h), f"-max_total_time={seconds}", "-print_final_stats=1",
           f"-artifact_prefix={h.regressions}/", str(h.work), *map(str, inputs(h))]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=environment(h), cwd=ROOT)
    res = _parse(h, proc, time.monotonic() - t0)
    log = BUILD / "logs" / f"{h.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(proc.stdout + proc.stderr)
    return res


def merge(h: Harness) -> int:
    """Add the inputs of build/fuzz/work/<h> that reach new coverage to fuzz/corpus/<h>."""
    if not h.work.is_dir():
        return 0
    h.corpus.mkdir(parents=True, exist_ok=True)
    before = len(list(h.corpus.iterdir()))
    cmd = [*command(h), *limits(h), "-merge=1", str(h.corpus), str(h.work)]
    subprocess.run(cmd, capture_output=True, text=True, env=environment(h), cwd=ROOT,
                   check=True)
    return len(list(h.corpus.iterdir())) - before
