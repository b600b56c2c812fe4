"""AARP answers inside the tunnel node: the aarp package's responder for the node's anycast
addresses, as a service whose start errors are one-line configuration errors."""

from __future__ import annotations

from relay.runtime.daemon import Service
from relay.runtime.errors import ConfigError
from relay.tunnel.settings import AarpAnswer


def responder(answer: AarpAnswer) -> Service:
    # imported here: only nodes that answer AARP load the responder (and what it imports)
    from aarp.responder_service import ResponderError, ResponderService
    kwargs: dict = {}
    if answer.port:
        kwargs["port"] = answer.port
    if answer.key:
        try:
            kwargs["key"] = bytes.fromhex(answer.key)
        except ValueError:
            raise ConfigError("[aarp].key must be hexadecimal") from None
    try:
        return StartChecked(ResponderService.from_options(answer.anycast, answer.unicast,
                                                          **kwargs))
    except (ResponderError, ValueError) as exc:
        raise ConfigError(f"AARP responder: {exc}") from None


class StartChecked:
    """A wrapped service whose start errors become ConfigError (one line, exit 2)."""

    def __init__(self, inner: Service) -> None:
        self.inner = inner
        self.name = getattr(inner, "name", "service")

    async def start(self) -> None:
        try:
            await self.inner.start()
        except (OSError, RuntimeError) as exc:
            raise ConfigError(f"{self.name}: {exc}") from None

    async def stop(self) -> None:
        await self.inner.stop()

    def status(self) -> dict:
        return self.inner.status()

    def health(self) -> list[str]:
        fn = getattr(self.inner, "health", None)
        return fn() if fn is not None else []
