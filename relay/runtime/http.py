"""The node's operations HTTP endpoint (--http-listen): GET /metrics (Prometheus) and GET
/status (the JSON of `anytun-relay status`), on the listener both daemons share
(aarp.ops.http). Further paths register with route()."""

from __future__ import annotations

from collections.abc import Callable

from aarp.ops.exposition import CONTENT_TYPE
from aarp.ops.http import ListenError, OpsHttpServer, Reply, parse_listen
from relay.runtime.errors import ConfigError

__all__ = ["NodeHttp", "listen_address"]


def listen_address(text: str) -> tuple[str, int]:
    try:
        return parse_listen(text)
    except ListenError as exc:
        raise ConfigError(f"--http-listen {exc}") from None


class NodeHttp(OpsHttpServer):
    def __init__(self, host: str, port: int, status_fn: Callable[[], dict],
                 metrics_fn: Callable[[dict], bytes]) -> None:
        super().__init__(host, port)
        self.status_fn = status_fn

        async def metrics() -> Reply:
            return Reply(200, metrics_fn(self.status_fn()), CONTENT_TYPE)

        async def status() -> Reply:
            return Reply.json(200, self.status_fn())

        self.route("/metrics", metrics)
        self.route("/status", status)

    async def start(self) -> None:
        try:
            await super().start()
        except ListenError as exc:
            raise ConfigError(str(exc)) from None
