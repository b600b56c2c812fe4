"""Every ```sh run=HOST block of README.md and docs/ runs as written: in the namespace lab
(s1, s2: anycast servers; cli1: a client) or locally in the repository, in the order of its
document, with this package's commands and the real peers (uanytun) on PATH."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import AnycastLab
from tests.conftest import require
from tests.docs_blocks import ROOT, Block, runnable

pytestmark = pytest.mark.e2e
BLOCKS = runnable()
DOCS = sorted({b.doc for b in BLOCKS})


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    require(os.geteuid() == 0, "root for the lab's namespaces")
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")


def _labs() -> Iterator[AnycastLab]:
    lab = AnycastLab(servers=2, clients=1, tag="docs")
    try:
        yield lab
    finally:
        lab.close()


def _run(block: Block, lab: AnycastLab, env: dict[str, str]) -> subprocess.CompletedProcess:
    script = ["bash", "-e", "-o", "pipefail", "-c", block.text]
    host = block.attrs["run"]
    if host == "local":
        return subprocess.run(script, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=120)
    node = {"s1": lab.server(1), "s2": lab.server(2), "cli1": lab.client}[host]
    return subprocess.run(node.host.argv(script), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_commands_run_as_written(doc: Path, env: dict[str, str]) -> None:
    """One lab per document: its blocks build on each other (a server, then its client)."""
    for lab in _labs():
        for block in (b for b in BLOCKS if b.doc == doc):
            proc = _run(block, lab, env)
            assert proc.returncode == 0, (f"{block.where} failed ({proc.returncode}):\n"
                                          f"{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}")
