"""The user documentation: no dead links or paths, no internal words, fenced blocks follow the
convention (tests/docs_blocks.py), and every ```toml node file passes check-config."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from relay import cli
from tests.docs_blocks import DOCS, ROOT, blocks

INTERNAL = re.compile(r"\bissues? \d|\bseeds?\b|\bhelpers?\b|subagent|farm-studio|"
                      r"\bduplicates\b", re.I)
PATH = re.compile(r"`((?:aarp|relay|shim_c|tests|lab|demo|bench|docs|packaging|aarp.ops)/"
                  r"[\w./*-]+)`")
HOSTS = {"local", "s1", "s2", "cli1"}


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_no_internal_words(doc: Path) -> None:
    for n, line in enumerate(doc.read_text().splitlines(), 1):
        assert not INTERNAL.search(line), f"{doc.name}:{n}: {line.strip()}"


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_links_and_paths_exist(doc: Path) -> None:
    text = doc.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        path = (doc.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{doc.name}: dead link {target}"
    for path in PATH.findall(text):
        if "{" in path:
            continue
        assert list(ROOT.glob(path.rstrip("/."))), f"{doc.name}: no such path {path}"
    assert "spec/aarp.md" not in text and "Go side" not in text


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_fenced_blocks_follow_the_convention(doc: Path) -> None:
    for b in blocks(doc):
        assert b.lang in ("sh", "toml"), f"{b.where}: fenced ```{b.lang}: use sh or toml"
        if b.lang == "sh":
            assert b.attrs.get("run") in HOSTS, f"{b.where}: ```sh needs run= one of {HOSTS}"


TOMLS = [b for d in DOCS for b in blocks(d) if b.lang == "toml"]


@pytest.mark.parametrize("block", TOMLS, ids=[b.where for b in TOMLS])
def test_toml_blocks_check(block, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "node.toml"
    path.write_text(block.text)
    assert cli.main(["check-config", str(path)]) == 0, capsys.readouterr().err
