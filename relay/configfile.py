"""--config FILE: the node's whole configuration in one TOML file.

Every option of the command line has its place, named by its long option with `_` for `-`,
in the section of its group; a tunnel server keeps the format of relay.tunnel.nodefile:

    [process]   user, group, chroot, pidfile, log = ["syslog:3"], http_listen, ...
                (the long options: username, groupname, chroot, write_pid, log, ...)
    [tunnel]    a point-to-point tunnel or an anytun-controld node: interface, port,
                remote_host, passphrase, ... (the tunnel options)
    [node] [defaults] [open_tunnel] [aarp] [[connection]]   a tunnel server (docs/server.md)
    [relay]     relay mode: rtpproxy = ["udp:127.0.0.1:22222"], rtp_address, rtp_ports, ...
    [cluster]   sync = "redis://...", sync_node, cluster_key_file, handover, ...

The file's values go through the same parsers and checks as the command line and become the
same settings (relay.node.Settings). A process, relay or cluster option given on the command
line as well wins over the file; tunnel options belong in the file (relay.cli refuses them
beside --config). Mistakes name the file and line: `node.toml:12: [relay].rtp_ports: ...`.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import tomllib
from typing import Any

from relay.runtime.errors import ConfigError
from relay.tunnel import nodefile

OPTION_SECTIONS = ("process", "tunnel", "relay", "cluster")
SERVER_SECTIONS = ("node", "defaults", "open_tunnel", "aarp", "connection")
NOT_IN_FILE = {"config", "help", "version"}


class FileError(ConfigError):
    """A mistake in the configuration file, with its line when one can be named."""


def file_keys(parser: argparse.ArgumentParser) -> dict[str, dict[str, argparse.Action]]:
    """section -> key -> the option it stands for (relay.cli records each option's section)."""
    sections: dict[str, str] = getattr(parser, "file_sections", {})
    out: dict[str, dict[str, argparse.Action]] = {s: {} for s in OPTION_SECTIONS}
    for action in parser._actions:
        section = sections.get(action.dest)
        if section and action.dest not in NOT_IN_FILE and action.option_strings:
            out[section][action.dest] = action
    return out


def line_of(text: str, section: str | None, key: str | None = None,
            index: int | None = None) -> int | None:
    """The line (1-based) of `key` in `[section]` (the index-th `[[section]]`), or of the
    section's header when key is None."""
    current: str | None = None
    count = 0
    header = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        m = re.match(r"\[\[\s*([\w.-]+)\s*\]\]|\[\s*([\w.-]+)\s*\]", line)
        if m:
            current = m.group(1) or m.group(2)
            if current == section:
                count += 1
                if index is None or count == index:
                    header = n
            continue
        if current != section or (index is not None and count != index) or key is None:
            continue
        if re.match(rf"(?:\"{re.escape(key)}\"|{re.escape(key)})\s*=", line):
            return n
    return header


_WHERE = re.compile(r"\[\[?(\w+)\]\]?(?: #(\d+))?[^.:\s]*(?:\.(\w+))?")


def with_line(path: str, text: str, message: str) -> str:
    """`path:line: message` for nodefile's messages (`[node].port must be ...`,
    `[[connection]] #2 (x): ...`) and TOML syntax errors (`... (at line 3, column 7)`)."""
    if message.startswith(f"{path}: "):
        message = message[len(path) + 2:]
    m = re.search(r"\(at line (\d+), column \d+\)", message)
    if m:
        return f"{path}:{m.group(1)}: {message[:m.start()].strip()}"
    m = _WHERE.match(message)
    if m:
        line = line_of(text, m.group(1), m.group(3), int(m.group(2)) if m.group(2) else None)
        if line is not None:
            return f"{path}:{line}: {message}"
    return f"{path}: {message}"


def _value(parser: argparse.ArgumentParser, action: argparse.Action, where: str,
           value: Any) -> Any:
    if action.nargs == 0:       # a flag: true or false
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, not {value!r}")
        return value if isinstance(action, argparse._StoreTrueAction) else not value
    appends = isinstance(action, argparse._AppendAction)
    items = value if appends and isinstance(value, list) else [value]
    out = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            kind = "a list of strings" if appends else "a string or a number"
            raise ConfigError(f"{where} must be {kind}, not {item!r}")
        try:
            out.append(parser._get_values(action, [str(item)]))
        except argparse.ArgumentError as exc:
            raise ConfigError(f"{where}: {exc.message}") from None
    return out if appends else out[0]


class Loaded:
    """The file's options merged into the command line's, and where each came from."""

    def __init__(self, path: str, text: str, args: argparse.Namespace,
                 lines: dict[str, tuple[str, int | None]]) -> None:
        self.path, self.text, self.args, self.lines = path, text, args, lines

    def explain(self, parser: argparse.ArgumentParser, message: str) -> str:
        """An error of the settings, told with the file's key and line when it is about an
        option the file gave."""
        if self.args.config and (_WHERE.match(message) or  # a server file: nodefile's words
                                 message.startswith(f"{self.path}: ")):
            return with_line(self.path, self.text, message)
        actions = {a.dest: a for a in parser._actions}
        for dest, (where, line) in self.lines.items():
            for opt in actions[dest].option_strings:
                pattern = rf"(?<![\w-]){re.escape(opt)}(?![\w-])"
                if re.search(pattern, message):
                    place = f"{self.path}:{line}" if line else self.path
                    return f"{place}: {re.sub(pattern, where, message)}"
        return message


def load(parser: argparse.ArgumentParser, args: argparse.Namespace, path: str) -> Loaded:
    text = nodefile.read_text(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FileError(with_line(path, text, str(exc))) from None
    except RecursionError:
        raise FileError(f"{path}: values nested too deeply") from None
    allowed = (*OPTION_SECTIONS, *SERVER_SECTIONS)
    for name in doc:
        if name not in allowed:
            line = line_of(text, name) or line_of(text, None, name)
            raise FileError(f"{path}{f':{line}' if line else ''}: unknown section [{name}]; "
                            f"allowed: {', '.join(f'[{s}]' for s in allowed)}")
    if "tunnel" in doc and any(s in doc for s in SERVER_SECTIONS):
        raise FileError(f"{path}:{line_of(text, 'tunnel')}: [tunnel] is a point-to-point "
                        "tunnel, [node]/[[connection]] a tunnel server: one of them")
    keys = file_keys(parser)
    merged = copy.copy(args)
    lines: dict[str, tuple[str, int | None]] = {}
    for section in OPTION_SECTIONS:
        table = doc.get(section)
        if table is None:
            continue
        if not isinstance(table, dict):
            line = line_of(text, section) or line_of(text, None, section)
            raise FileError(f"{path}:{line}: {section} must be a table [{section}]")
        for key, value in table.items():
            line = line_of(text, section, key)
            where = f"[{section}].{key}"
            action = keys[section].get(key)
            if action is None:
                raise FileError(f"{path}{f':{line}' if line else ''}: {where}: unknown key; "
                                f"allowed in [{section}]: {', '.join(sorted(keys[section]))}")
            try:
                parsed = _value(parser, action, where, value)
            except ConfigError as exc:
                raise FileError(f"{path}{f':{line}' if line else ''}: {exc}") from None
            if getattr(args, action.dest, None) != action.default:
                continue   # given on the command line: that wins
            setattr(merged, action.dest, parsed)
            lines[action.dest] = (where, line)
    merged.config = path if any(s in doc for s in SERVER_SECTIONS) else None
    return Loaded(path, text, merged, lines)


def readable_by_others(path: str) -> bool:
    try:
        return bool(os.stat(path).st_mode & 0o004)
    except OSError:
        return False
