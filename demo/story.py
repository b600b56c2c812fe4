"""The story `make demo` tells: chapters print steps, and a failed check ends the demo."""

from __future__ import annotations

import time
from pathlib import Path


class DemoFailed(Exception):
    pass


class Story:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.t0 = time.monotonic()

    def chapter(self, title: str) -> None:
        print(f"\n== {title}", flush=True)

    def say(self, text: str) -> None:
        print(f"   [{time.monotonic() - self.t0:5.1f}s] {text}", flush=True)

    def check(self, ok: bool, good: str, bad: str) -> None:
        if not ok:
            self.say(f"FAILED: {bad}")
            raise DemoFailed(bad)
        self.say(f"ok: {good}")
