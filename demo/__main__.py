"""`make demo`: the product's main jobs on a local anycast lab, told as a short story.

Each chapter is a function taking the lab and a Story (demo/story.py); a failed step raises
DemoFailed, which ends the demo with a non-zero exit status. The chapters live in this folder,
one file per part of the product; `chapters()` lists them in order.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from demo.cluster import chapter_cluster
from demo.relay_mode import chapter_relay
from demo.resolve import chapter_resolve
from demo.shim import chapter_shim
from demo.story import DemoFailed, Story
from demo.tunnel import chapter_server, chapter_tunnel
from lab import AA6, AK6, AnycastLab


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


def chapters() -> list[Callable[[AnycastLab, Story], None]]:
    """The chapters in the order they run."""
    return [chapter_lab, chapter_resolve, chapter_shim, chapter_relay, chapter_tunnel,
            chapter_server, chapter_cluster]


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
