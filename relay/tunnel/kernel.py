"""What the node asks of the operating system: routes to client prefixes via the device, and
open tunnel mode (forwarding + nftables source NAT to the anycast address).

Everything set up here is removed on stop: the nftables table (named after the device), the
forwarding sysctls the node changed (restored to their old values); routes die with the device.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess

from relay.runtime.errors import ConfigError
from relay.runtime.logtargets import NOTICE
from relay.tunnel.endpoint import Endpoint
from relay.tunnel.routes import Prefix
from relay.tunnel.settings import OpenTunnel
from relay.tunnel.table import ConnectionTable, Event, RouteAdded, RouteRemoved

log = logging.getLogger("anytun-relay.kernel")


class KernelRoutes:
    """Keeps `ip route <client prefix> dev <device>` in step with the route table, batched."""

    name = "kernel-routes"

    def __init__(self, endpoint: Endpoint, table: ConnectionTable) -> None:
        self.endpoint = endpoint
        self.table = table
        self._pending: dict[Prefix, bool] = {}  # prefix -> present
        self._unsubscribe = None
        self._flush: asyncio.Task | None = None
        self.installed = 0
        self.errors = 0

    async def start(self) -> None:
        self._unsubscribe = self.table.subscribe(self._on_event)
        for prefix, _ in self.table.routes.items():
            self._pending[prefix] = True
        await self._apply()

    async def stop(self) -> None:
        if self._unsubscribe:
            self._unsubscribe()
        if self._flush is not None:
            self._flush.cancel()

    def status(self) -> dict:
        return {"installed": self.installed, "errors": self.errors}

    def _on_event(self, event: Event) -> None:
        if isinstance(event, RouteAdded):
            self._pending[event.prefix] = True
        elif isinstance(event, RouteRemoved):
            self._pending[event.prefix] = event.prefix in self.table.routes
        else:
            return
        if self._flush is None or self._flush.done():
            self._flush = asyncio.get_running_loop().create_task(self._apply())

    async def _apply(self) -> None:
        await asyncio.sleep(0)  # gather a burst of changes (a reload) into one batch
        dev = self.endpoint.device
        if dev is None or not self._pending:
            return
        batch, self._pending = self._pending, {}
        lines = [f"route {'replace' if present else 'del'} {p} dev {dev.name}"
                 for p, present in batch.items()]
        proc = await asyncio.create_subprocess_exec(
            "ip", "-force", "-batch", "-", stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        _, err = await proc.communicate("\n".join(lines).encode() + b"\n")
        bad = [ln for ln in err.decode(errors="replace").splitlines() if ln.strip()]
        self.errors += len(bad)
        self.installed += sum(batch.values())
        for line in bad[:5]:
            # "No such process" on deleting a route that the device took along: harmless
            log.debug("ip route: %s", line)
        log.info("kernel routes: %d changed via %s", len(lines), dev.name)


def _sysctl_path(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/")


class OpenTunnelNat:
    """Open tunnel mode: clients' packets for hosts that speak no SATP leave with the anycast
    address as source (nftables SNAT); replies find the client through conntrack and the
    kernel routes to the device."""

    name = "open-tunnel"
    SYSCTLS = ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding")

    def __init__(self, endpoint: Endpoint, cfg: OpenTunnel) -> None:
        self.endpoint = endpoint
        self.cfg = cfg
        self._saved: dict[str, str] = {}
        self.table_name: str | None = None

    def _ruleset(self, dev: str) -> str:
        out = f'oifname "{self.cfg.out_interface}"' if self.cfg.out_interface \
            else f'oifname != "{dev}"'
        rules = []
        if self.cfg.snat4:
            rules.append(f'iifname "{dev}" {out} meta nfproto ipv4 snat ip to {self.cfg.snat4}')
        if self.cfg.snat6:
            rules.append(f'iifname "{dev}" {out} meta nfproto ipv6 snat ip6 to {self.cfg.snat6}')
        body = "\n    ".join(rules)
        return (f"table inet {self.table_name} {{\n  chain postrouting {{\n"
                f"    type nat hook postrouting priority srcnat; policy accept;\n    {body}\n"
                f"  }}\n}}\n")

    def _nft(self, script: str, check: bool = True) -> None:
        proc = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise ConfigError(f"open tunnel mode: nft failed: {proc.stderr.strip()}")

    async def start(self) -> None:
        dev = self.endpoint.device
        assert dev is not None
        self.table_name = f"anytun_relay_{dev.name}".replace("-", "_").replace(".", "_")
        self._nft(f"delete table inet {self.table_name}\n", check=False)  # left by a crash
        for key in self.SYSCTLS:
            if (key.startswith("net.ipv4") and not self.cfg.snat4) or \
                    (key.startswith("net.ipv6") and not self.cfg.snat6):
                continue
            with open(_sysctl_path(key)) as f:
                old = f.read().strip()
            if old != "1":
                self._saved[key] = old
                with open(_sysctl_path(key), "w") as f:
                    f.write("1")
        self._nft(self._ruleset(dev.name))
        log.log(NOTICE, "open tunnel mode: traffic from %s leaves with source %s", dev.name,
                " / ".join(a for a in (self.cfg.snat4, self.cfg.snat6) if a))

    def update(self, cfg: OpenTunnel) -> None:
        if cfg == self.cfg or self.endpoint.device is None:
            return
        self.cfg = cfg
        ruleset = self._ruleset(self.endpoint.device.name)
        self._nft(f"delete table inet {self.table_name}\n{ruleset}")  # one transaction
        log.log(NOTICE, "open tunnel mode updated: source %s",
                " / ".join(a for a in (cfg.snat4, cfg.snat6) if a))

    async def stop(self) -> None:
        if self.table_name:
            self._nft(f"delete table inet {self.table_name}\n", check=False)
        for key, old in self._saved.items():
            try:
                with open(_sysctl_path(key), "w") as f:
                    f.write(old)
            except OSError as exc:
                log.warning("cannot restore %s=%s: %s", key, old, exc)
        self._saved.clear()

    def status(self) -> dict:
        return {"snat4": self.cfg.snat4, "snat6": self.cfg.snat6, "table": self.table_name,
                "changed_sysctls": dict(self._saved)}
