"""Health sources for the announcer: each answers "should this node carry the anycast
address now?" as UP, DOWN or DRAIN with a reason.

* RelayCheck: a running anytun-relay's control socket (`health` command);
* HttpCheck: an HTTP health endpoint (`GET /health` of anytun-relay or aarp-responder, or any
  service's): 200 is UP, a JSON body with `"draining": true` is DRAIN, anything else DOWN;
* CommandCheck: a command, exit status 0 is UP;
* MaintenanceFile: DRAIN while the file exists (the operator's `touch`).

Every check is bounded by its timeout and never raises: a check that cannot run is DOWN.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from relay.announce.dampen import Health
from relay.runtime.control import abstract_name, discover, request


@dataclass(frozen=True)
class CheckResult:
    health: Health
    reason: str = ""


class Check(Protocol):
    label: str

    def run(self, timeout: float) -> CheckResult: ...


def _from_document(doc: object) -> CheckResult | None:
    """UP/DOWN/DRAIN from a health document ({"healthy": .., "draining": .., "reasons": ..})."""
    if not isinstance(doc, dict) or "healthy" not in doc:
        return None
    reasons = doc.get("reasons")
    why = "; ".join(str(r) for r in reasons) if isinstance(reasons, list) else ""
    if doc.get("draining") is True:
        return CheckResult(Health.DRAIN, why or "draining")
    if doc.get("healthy") is True:
        return CheckResult(Health.UP, why)
    return CheckResult(Health.DOWN, why or "not healthy")


class RelayCheck:
    """The `health` command on an anytun-relay control socket (a device name, a socket path,
    or None for the only node in this network namespace)."""

    def __init__(self, target: str | None = None) -> None:
        self.target = target
        self.label = f"anytun-relay {target}" if target else "anytun-relay"

    def _address(self) -> str | None:
        if self.target is None:
            found = discover()
            return found[0] if len(found) == 1 else None
        return self.target if "/" in self.target else abstract_name(self.target)

    def run(self, timeout: float) -> CheckResult:
        address = self._address()
        if address is None:
            return CheckResult(Health.DOWN, "no single anytun-relay node in this namespace")
        try:
            doc = request(address, "health", timeout=timeout)
        except (OSError, ValueError) as exc:
            return CheckResult(Health.DOWN, f"control socket: {exc}")
        result = _from_document(doc)
        if result is None:
            err = doc.get("error") if isinstance(doc, dict) else None
            return CheckResult(Health.DOWN, f"control socket: {err or 'no health document'}")
        return result


class HttpCheck:
    def __init__(self, url: str) -> None:
        self.url = url
        self.label = url

    def run(self, timeout: float) -> CheckResult:
        try:
            with urllib.request.urlopen(self.url, timeout=timeout) as resp:
                code, body = resp.status, resp.read(65536)
        except urllib.error.HTTPError as exc:
            code, body = exc.code, exc.read(65536)
        except (OSError, ValueError) as exc:
            return CheckResult(Health.DOWN, f"{self.url}: {getattr(exc, 'reason', exc)}")
        try:
            doc = json.loads(body) if body else None
        except ValueError:
            doc = None
        result = _from_document(doc)
        if result is not None and (result.health is Health.DRAIN
                                   or (result.health is Health.UP) == (code == 200)):
            return result
        if code == 200:
            return CheckResult(Health.UP)
        return CheckResult(Health.DOWN, f"{self.url}: HTTP {code}")


class CommandCheck:
    """A shell command; exit status 0 is UP. Its output is thrown away, its first line of
    stderr becomes the reason."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.label = command

    def run(self, timeout: float) -> CheckResult:
        try:
            proc = subprocess.run(["sh", "-c", self.command], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  timeout=timeout, text=True, errors="replace")
        except subprocess.TimeoutExpired:
            return CheckResult(Health.DOWN, f"{self.command!r} took longer than {timeout:g}s")
        except OSError as exc:
            return CheckResult(Health.DOWN, f"{self.command!r}: {exc}")
        if proc.returncode == 0:
            return CheckResult(Health.UP)
        first = (proc.stderr.strip().splitlines() or [""])[0][:200]
        return CheckResult(Health.DOWN, f"{self.command!r} exited {proc.returncode}"
                           + (f": {first}" if first else ""))


class MaintenanceFile:
    def __init__(self, path: str) -> None:
        self.path = path
        self.label = f"maintenance file {path}"

    def run(self, timeout: float) -> CheckResult:
        if os.path.exists(self.path):
            return CheckResult(Health.DRAIN, f"{self.path} exists")
        return CheckResult(Health.UP)


def combine(results: Sequence[CheckResult]) -> CheckResult:
    """All checks must be UP; a DRAIN anywhere drains (it is obeyed at once), else the first
    DOWN decides."""
    for wanted in (Health.DRAIN, Health.DOWN):
        bad = [r for r in results if r.health is wanted]
        if bad:
            return CheckResult(wanted, "; ".join(r.reason for r in bad if r.reason))
    return CheckResult(Health.UP)
