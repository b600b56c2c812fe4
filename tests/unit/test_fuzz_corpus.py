"""Every fuzz harness (fuzz/) replays its corpus and its regression inputs: what once
crashed, hung or used too much memory must pass now, within the per-input time and memory
bounds the harness sets (a slow input fails like a crash). `make fuzz` is the long run."""

from __future__ import annotations

import importlib.util
import os

import pytest

from fuzz import harnesses as hz
from fuzz import initial
from tests.conftest import require


@pytest.fixture(scope="session")
def c_toolchain() -> None:
    why = hz.can_build()
    require(why is None, f"clang with libFuzzer and the sanitizers ({why})")


@pytest.mark.parametrize("h", hz.HARNESSES, ids=[h.name for h in hz.HARNESSES])
def test_harness_passes_its_corpus_and_regressions(h: hz.Harness, request) -> None:
    if h.kind == "c":
        request.getfixturevalue("c_toolchain")
    else:
        require(importlib.util.find_spec("atheris") is not None, "atheris (pip: atheris)")
    if h.needs_root:
        require(os.geteuid() == 0, "root for a network namespace of the harness's own")
    assert hz.inputs(h), f"{h.name} has no corpus"
    r = hz.check(h)
    assert r.ok, f"{h.name} failed on its corpus or regressions:\n{r.tail}"
    runs = sum(len(list(d.iterdir())) for d in hz.inputs(h))
    assert r.execs >= min(runs, 1), r.tail  # it really ran the inputs


def test_the_initial_inputs_are_the_vectors_of_today() -> None:
    """`python -m fuzz init` was run after the vectors last changed."""
    for name, make in initial.GENERATORS.items():
        have = {p.read_bytes() for p in (hz.CORPUS / name).glob("init-*")}
        assert set(make()) <= have, f"run `python -m fuzz init {name}`"


def test_every_harness_bounds_time_and_memory_per_input() -> None:
    for h in hz.HARNESSES:
        flags = hz.limits(h)
        assert any(f.startswith("-timeout=") for f in flags)
        assert any(f.startswith("-rss_limit_mb=") for f in flags)
        if h.kind == "c":
            assert any(f.startswith("-malloc_limit_mb=") for f in flags)
        assert h.source.exists(), h.source
