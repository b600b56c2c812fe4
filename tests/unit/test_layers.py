"""The structure is a contract: the layers of pyproject.toml's import-linter contracts hold
(`make lint` runs lint-imports too), and no module reaches itself through its imports."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("aarp", "relay", "lab", "demo")


def test_no_import_cycles() -> None:
    graph = grimp.build_graph(*PACKAGES)
    cycles = sorted((m, i) for m in graph.modules
                    for i in graph.find_modules_directly_imported_by(m)
                    if graph.chain_exists(i, m))
    assert cycles == []


def test_the_shared_operations_kit_stands_alone() -> None:
    """aarp.ops serves both daemons: it imports nothing else of aarp and nothing of relay."""
    graph = grimp.build_graph(*PACKAGES)
    outside = sorted((m, i) for m in graph.find_descendants("aarp.ops") | {"aarp.ops"}
                     for i in graph.find_modules_directly_imported_by(m)
                     if i.split(".")[0] in ("aarp", "relay") and not i.startswith("aarp.ops"))
    assert outside == []


def test_the_import_contracts_hold() -> None:
    exe = Path(sys.executable).parent / "lint-imports"
    if not exe.exists():
        exe = Path(shutil.which("lint-imports") or "lint-imports")
    if not exe.exists():
        pytest.fail("lint-imports missing: install the test extras (pip install -e .[test])")
    proc = subprocess.run([str(exe)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
