"""relay.tunnel.nodefile, the node's TOML configuration: any file is a node configuration
or one NodeConfigError naming the place, never another exception (what the daemon would print
as a traceback)."""

from __future__ import annotations

from fuzz.py import instrumented, run

with instrumented():
    from relay.tunnel.nodefile import NodeConfigError, parse


def test_one_input(data: bytes) -> None:
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return  # load() refuses it before parsing: "not UTF-8 text"
    try:
        cfg = parse(text, "fuzz.toml")
    except NodeConfigError as exc:
        assert str(exc).strip()
        return
    muxes = [c.mux for c in cfg.connections]
    assert len(muxes) == len(set(muxes))


if __name__ == "__main__":
    run(test_one_input)
