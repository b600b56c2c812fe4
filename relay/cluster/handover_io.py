"""The handover service: sets up what relay.cluster.handover describes and keeps it in step with
the cluster's `node` records. Everything it creates is removed on stop (the VXLAN device, its
routing table entries and rules, the nftables tables)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relay.cluster import handover as ho
from relay.cluster.records import Record
from relay.cluster.service import ClusterSync
from relay.runtime.errors import ConfigError
from relay.tunnel.endpoint import Endpoint
from relay.tunnel.kernel import OpenTunnelNat

log = logging.getLogger("anytun-relay.handover")


@dataclass(frozen=True)
class HandoverOptions:
    address: str
    ports: tuple[int, int] = ho.DEFAULT_PORTS
    block: int = ho.DEFAULT_BLOCK
    vni: int = ho.DEFAULT_VNI
    udp_port: int = ho.DEFAULT_UDP_PORT
    table: int = ho.DEFAULT_TABLE


def _run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True)


def uplink_of(address: str) -> str | None:
    """The interface that holds `address` (the VXLAN link's underlay)."""
    fam = "-6" if ":" in address else "-4"
    out = _run(["ip", "-j", fam, "addr", "show", "to", address]).stdout
    try:
        for link in json.loads(out or "[]"):
            if link.get("addr_info"):
                return link["ifname"]
    except (ValueError, KeyError, TypeError):
        pass
    return None


class HandoverService:
    """A Service: starts after the tunnel endpoint and open tunnel mode."""

    name = "handover"

    def __init__(self, sync: ClusterSync, endpoint: Endpoint, nat: OpenTunnelNat,
                 options: HandoverOptions, sender_id: int) -> None:
        self.sync = sync
        self.endpoint = endpoint
        self.nat = nat
        self.opts = options
        self.sender_id = sender_id
        self.me = ho.Member(sync.store.node, sender_id, options.address,
                            ho.port_block(sender_id, *options.ports, options.block),
                            options.vni, options.udp_port)
        self.layout: ho.Layout | None = None
        self.peers: list[ho.Member] = []
        self.problems: list[str] = []
        self._unsubscribe = None
        self._dirty = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._created = False
        self.errors = 0

    async def start(self) -> None:
        dev = self.endpoint.device
        if dev is None:
            raise ConfigError("handover: the tunnel device is not up")
        cfg = self.nat.cfg
        self.layout = ho.Layout(self.me, dev.name, cfg.snat4, cfg.snat6, self.opts.table)
        uplink = uplink_of(self.opts.address)
        if uplink is None:
            raise ConfigError(f"--handover {self.opts.address} is not an address of this host")
        self._teardown_links()  # what a crash may have left
        name = self.layout.device
        steps = [
            ["ip", "link", "add", name, "type", "vxlan", "id", str(self.opts.vni), "local",
             self.opts.address, "dstport", str(self.opts.udp_port), "nolearning", "dev", uplink],
            ["ip", "link", "set", name, "address", ho.mac_of(self.sender_id), "up"],
        ]
        for fam, addr in (("-4", cfg.snat4), ("-6", cfg.snat6)):
            if addr:
                steps.append(["ip", fam, "rule", "add", "pref", str(self.opts.table), "oif",
                              name, "lookup", str(self.opts.table)])
        for argv in steps:
            proc = _run(argv)
            if proc.returncode != 0:
                self._teardown_links()
                raise ConfigError(f"handover: {' '.join(argv[:3])} failed: "
                                  f"{proc.stderr.strip() or proc.returncode}")
        self._created = True
        self._sysctls(name)
        self._unsubscribe = self.sync.store.subscribe(self._on_record)
        try:
            await self._apply()
        except BaseException:
            await self.stop()   # the daemon stops only the services that started
            raise
        self.sync.share("node", self.me.node, self.me.to_data())
        self._task = asyncio.get_running_loop().create_task(self._follow())
        log.info("open tunnel mode across nodes: this node translates into ports %d-%d of %s; "
                 "flows of other nodes' blocks go to them over VXLAN %s (%s, port %d)",
                 *self.me.ports, " / ".join(a for a in (cfg.snat4, cfg.snat6) if a), name,
                 self.opts.address, self.opts.udp_port)

    def _sysctls(self, name: str) -> None:
        # handed-over packets arrive on the VXLAN device with sources routed elsewhere
        path = Path(f"/proc/sys/net/ipv4/conf/{name}/rp_filter")
        with contextlib.suppress(OSError):
            path.write_text("0")
        with contextlib.suppress(OSError, ValueError):
            if Path("/proc/sys/net/ipv4/conf/all/rp_filter").read_text().strip() == "1":
                log.warning("net.ipv4.conf.all.rp_filter=1 (strict) drops packets handed over "
                            "by other nodes; set it to 2 (loose)")

    def _on_record(self, new: Record, old: Record | None) -> None:
        if new.kind == "node":
            self._dirty.set()

    async def _follow(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._apply()
            except Exception:   # keep following; the next change retries
                self.errors += 1
                log.exception("handover: applying the cluster's members failed")
            await asyncio.sleep(0.05)  # coalesce a burst (a resync) into one update

    def members(self) -> list[ho.Member]:
        out = []
        for rec in self.sync.store.live("node"):
            try:
                out.append(ho.Member.from_data(rec.key, rec.data))
            except ho.HandoverError as exc:
                log.warning("handover: %s", exc)
        return out

    async def _apply(self) -> None:
        assert self.layout is not None
        peers, problems = ho.usable_peers(self.me, self.members(), self.opts.ports,
                                          self.opts.block)
        for p in problems:
            if p not in self.problems:
                log.warning("handover: %s", p)
        self.problems = problems
        ip, bridge = ho.peer_commands(self.layout, self.peers, peers)
        for tool, lines in (("bridge", bridge), ("ip", ip)):
            if lines:
                await self._batch(tool, lines)
        await self._nft(ho.nft_script(self.layout, peers))
        if [p.node for p in peers] != [p.node for p in self.peers]:
            log.info("handover: flows are handed to %s",
                     ", ".join(f"{p.node} (sender ID {p.sid}, {p.address})" for p in peers)
                     or "nobody yet")
        self.peers = peers

    async def _batch(self, tool: str, lines: list[str]) -> None:
        proc = await asyncio.create_subprocess_exec(
            tool, "-force", "-batch", "-", stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        _, err = await proc.communicate("\n".join(lines).encode() + b"\n")
        for line in err.decode(errors="replace").splitlines():
            # deleting what is already gone is fine; anything else is worth a line
            if line.strip() and "No such" not in line and "Cannot find" not in line:
                self.errors += 1
                log.warning("handover: %s: %s", tool, line.strip())

    async def _nft(self, script: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            "nft", "-f", "-", stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        _, err = await proc.communicate(script.encode())
        if proc.returncode != 0:
            self.errors += 1
            raise ConfigError(f"handover: nft failed: {err.decode(errors='replace').strip()}")

    def _teardown_links(self) -> None:
        if self.layout is None:
            return
        name, table = self.layout.device, str(self.opts.table)
        _run(["nft", "-f", "-"], ho.nft_teardown(self.layout))
        for fam in ("-4", "-6"):
            for _ in range(8):   # every copy of the rule (a crash may have left several)
                if _run(["ip", fam, "rule", "del", "pref", table, "oif", name, "lookup",
                         table]).returncode != 0:
                    break
            _run(["ip", fam, "route", "flush", "table", table, "dev", name])
        _run(["ip", "link", "del", name])

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._created:
            self._teardown_links()
            self._created = False

    def status(self) -> dict:
        st: dict[str, Any] = {
            "sender_id": self.sender_id, "ports": list(self.me.ports),
            "address": self.opts.address,
            "device": self.layout.device if self.layout else None,
            "peers": [{"node": p.node, "sender_id": p.sid, "address": p.address,
                       "ports": list(p.ports)} for p in self.peers],
            "problems": list(self.problems), "errors": self.errors}
        if self.layout is not None:
            stats = Path(f"/sys/class/net/{self.layout.device}/statistics")
            with contextlib.suppress(OSError, ValueError):   # (GSO: a packet may be 64 KB)
                for key, name in (("handed_out", "tx"), ("handed_in", "rx")):
                    st[key] = {"packets": int((stats / f"{name}_packets").read_text()),
                               "bytes": int((stats / f"{name}_bytes").read_text())}
        return st


def check_address(text: str, option: str = "--handover") -> str:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError(f"{option} {text!r}: give this node's unicast IP address") from None
    if addr.is_multicast or addr.is_unspecified or addr.is_loopback:
        raise ConfigError(f"{option} {text}: give this node's unicast IP address")
    return str(addr)
