"""The benchmark runner (`python -m bench`, bench/__main__.py): one table, ratios, and a broken
benchmark that becomes an error row instead of failing the command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench import __main__ as runner
from bench.common import median, row

ROOT = Path(__file__).resolve().parents[2]


def test_rows_and_ratios() -> None:
    r = row("x", 30.0, 10.0, "kpps", "note")
    assert r == {"name": "x", "ours": 30.0, "reference": 10.0, "unit": "kpps", "ratio": 3.0,
                 "note": "note"}
    assert row("x", None, 10.0, "kpps")["ratio"] is None
    assert row("x", 5.0, 0.0, "kpps")["ratio"] is None  # no division by a missing reference
    assert median([3, None, 1, 2]) == 2 and median([None]) is None


def test_a_broken_module_becomes_an_error_row(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    pkg = tmp_path / "fakebench"
    pkg.mkdir()
    (pkg / "bench_boom.py").write_text("def run():\n    raise RuntimeError('no iperf3')\n")
    (pkg / "bench_exit.py").write_text("import sys\ndef run():\n    sys.exit(3)\n")
    (pkg / "bench_bad.py").write_text("def run():\n    return 42\n")
    (pkg / "bench_ok.py").write_text(
        "def run():\n    return [{'name': 'fast', 'ours': 2.0, 'reference': 1.0, "
        "'unit': 'x', 'ratio': 2.0, 'note': ''}]\n")
    (pkg / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    rows = [r for name in runner.discover([], [str(pkg)])
            for r in runner.run_module(name, "fakebench")]
    by_module = {r["module"]: r for r in rows}
    assert "no iperf3" in by_module["bench_boom"]["note"]
    assert by_module["bench_exit"]["note"].startswith("ERROR")
    assert "not a list of rows" in by_module["bench_bad"]["note"]
    assert by_module["bench_ok"]["ratio"] == 2.0
    text = runner.render(rows)
    assert "2.00x" in text and "ERROR: RuntimeError: no iperf3" in text


def test_the_command_lists_modules_and_refuses_bad_options() -> None:
    out = subprocess.run([sys.executable, "-m", "bench", "--list"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0 and "bench_tunnel" in out.stdout and "bench_relay" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "bench", "--rounds", "0"], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--rounds" in bad.stderr and "Traceback" not in bad.stderr
    none = subprocess.run([sys.executable, "-m", "bench", "no-such-benchmark"], cwd=ROOT,
                          capture_output=True, text=True)
    assert none.returncode == 2 and "no benchmark module matches" in none.stderr
