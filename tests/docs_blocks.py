"""The code blocks of README.md and docs/*.md, by the convention those files state: a fenced
block ```sh run=HOST runs as written on that host of the lab (local: this machine, in the
repository); ```toml blocks are node files that `anytun-relay check-config` accepts; indented
blocks are illustrative."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```(\w*)([^\n]*)\n(.*?)^```\s*$", re.M | re.S)


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int
    lang: str
    attrs: dict[str, str]
    text: str

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def blocks(doc: Path) -> list[Block]:
    text = doc.read_text()
    out = []
    for m in _FENCE.finditer(text):
        attrs = dict(a.split("=", 1) for a in m.group(2).split() if "=" in a)
        out.append(Block(doc, text[:m.start()].count("\n") + 1, m.group(1), attrs, m.group(3)))
    return out


def runnable() -> list[Block]:
    return [b for d in DOCS for b in blocks(d) if b.lang == "sh" and "run" in b.attrs]
