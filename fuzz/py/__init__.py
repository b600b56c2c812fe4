"""atheris harnesses: each module defines `test_one_input(data: bytes)` and ends with
`run(test_one_input)`. The project modules under test are imported inside
`instrumented()` so atheris sees their branches. An exception a harness does not expect is a
finding; so is an input that takes longer than -timeout or needs more memory than the cap."""

from __future__ import annotations

import contextlib
import os
import resource
import sys
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def instrumented() -> Iterator[None]:
    """Imports inside get coverage instrumentation (only the project's packages)."""
    try:
        import atheris
    except ImportError:  # running the harness code without atheris (plain replay)
        yield
        return
    with atheris.instrument_imports(include=["aarp", "relay"]):
        yield


def _cap_memory() -> None:
    """An input that allocates more than FUZZ_RSS_MB on top of what is mapped now raises
    MemoryError (an unexpected exception: a finding) instead of swapping the machine."""
    extra = int(os.environ.get("FUZZ_RSS_MB", "512")) << 20
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) << 10 for line in f if line.startswith("VmSize:"))
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]  # (children of -merge set their own)
    soft = vm + extra if hard == resource.RLIM_INFINITY else min(vm + extra, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def run(target: Callable[[bytes], None]) -> None:
    import atheris
    _cap_memory()
    # libFuzzer re-runs argv[0] through the shell for -merge and -fork: make that this module
    spec = sys.modules["__main__"].__spec__
    argv = [f"{sys.executable} -m {spec.name}" if spec else sys.argv[0], *sys.argv[1:]]
    atheris.Setup(argv, target)
    atheris.Fuzz()
