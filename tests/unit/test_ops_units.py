"""The shipped systemd units, checked by the real systemd-analyze: they verify, and their
exposure scores stay low (the figures are printed; docs/operations.md states them)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require

ROOT = Path(__file__).resolve().parents[2]
UNITS = {"anytun-relay@.service": 3.0, "aarp-responder.service": 3.0}


@pytest.fixture(scope="module")
def units(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(shutil.which("systemd-analyze") is not None, "systemd-analyze (systemd)")
    out = tmp_path_factory.mktemp("units")
    bindir = str(Path(sys.executable).parent)      # the commands exist there: verify checks
    for name in UNITS:
        text = (ROOT / "packaging/systemd" / f"{name}.in").read_text()
        (out / name).write_text(text.replace("@BINDIR@", bindir))
    return out


def test_units_verify(units: Path) -> None:
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no",
                           *[str(units / n) for n in UNITS]], capture_output=True, text=True,
                          cwd=units)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


@pytest.mark.parametrize("name", list(UNITS))
def test_units_exposure(units: Path, name: str) -> None:
    unit = units / name.replace("@.", "@node.")
    if unit.name != name:
        shutil.copy(units / name, unit)
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                           str(unit)], capture_output=True, text=True, cwd=units)
    m = re.search(r"Overall exposure level for \S+: ([\d.]+)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    print(f"{name}: exposure {m.group(1)}")
    assert float(m.group(1)) <= UNITS[name]
    for wanted in ("NoNewPrivileges=", "ProtectSystem=", "RestrictSUIDSGID=",
                   "CapabilityBoundingSet=~CAP_SYS_ADMIN", "User=/DynamicUser="):
        line = next(ln for ln in proc.stdout.splitlines() if wanted in ln)
        assert line.lstrip().startswith("✓"), line


def test_units_name_only_what_the_daemons_need() -> None:
    relay = (ROOT / "packaging/systemd/anytun-relay@.service.in").read_text()
    responder = (ROOT / "packaging/systemd/aarp-responder.service.in").read_text()
    assert "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BIND_SERVICE" in relay
    assert "CapabilityBoundingSet=CAP_NET_RAW\n" in responder
    for text in (relay, responder):
        assert "Type=notify" in text and "WatchdogSec=" in text and "User=" in text
    assert "StateDirectory=anytun-relay" in relay
    sysusers = (ROOT / "packaging/systemd/anycast-toolkit.sysusers").read_text()
    assert re.search(r"^u anytun-relay ", sysusers, re.M)
    assert re.search(r"^u aarp-responder ", sysusers, re.M)
