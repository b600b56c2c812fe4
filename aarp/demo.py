"""`make demo`: the product's main jobs on a local anycast lab, told as a short story.

Each chapter is a function taking the lab and a Story; a failed step raises DemoFailed, which
ends the demo with a non-zero exit status. Features add chapters to CHAPTERS.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from aarp.lab import AA6, AK6, AnycastLab


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


def chapter_lab(lab: AnycastLab, story: Story) -> None:
    story.chapter("The lab: a client, a router and two anycast servers in network namespaces")
    for s in lab.servers:
        story.say(f"server {s.name}: unicast {s.ip6} / {s.ip4}; anycast {AA6} on lo, "
                  f"kernel anycast {AK6}")
    story.say(f"client {lab.client.name}: {lab.client.ip6} / {lab.client.ip4}")
    for target in (1, 2, 1):
        lab.move(target)
        out = lab.client.run(["ping", "-c1", "-W2", "-n", AK6], check=False).stdout
        src = next((ln.split("from ")[1].split(": ")[0] for ln in out.splitlines()
                    if "bytes from" in ln), "no answer")
        story.check(src == lab.server(target).ip6,
                    f"route to s{target}: an echo to {AK6} is answered by {src}",
                    f"echo to {AK6} answered by {src}, expected {lab.server(target).ip6}")


# Later chapters live beside their features: "module:function", run in this order.
CHAPTER_REFS: list[str] = ["aarp.demo_resolve:chapter_resolve", "aarp.demo_shim:chapter_shim",
                           "relay.rtpproxy.demo:chapter_relay",
                           "relay.demo_tunnel:chapter_tunnel", "relay.demo_tunnel:chapter_server",
                           "relay.cluster.demo:chapter_cluster"]


def chapters() -> list[Callable[[AnycastLab, Story], None]]:
    found: list[Callable[[AnycastLab, Story], None]] = [chapter_lab]
    for ref in CHAPTER_REFS:
        module, func = ref.split(":")
        found.append(getattr(importlib.import_module(module), func))
    return found


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="aarp-demo-") as tmp:
        story = Story(Path(tmp))
        try:
            with AnycastLab(servers=2, clients=2, hosts=1, tag="demo") as lab:
                for chapter in chapters():
                    chapter(lab, story)
        except DemoFailed as exc:
            print(f"\ndemo FAILED: {exc}", file=sys.stderr)
            return 1
    print("\ndemo finished: every step worked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
