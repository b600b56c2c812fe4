"""Man pages and bash completion, generated from the commands' own argparse parsers (so they
never disagree with --help). Build tool, not installed:

    python packaging/docgen.py man DIR          # DIR/anytun-relay.8, aarp-resolve.1, ...
    python packaging/docgen.py completion DIR   # DIR/anytun-relay, ... (bash-completion)
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aarp import __version__
from aarp.cli import resolve, responder, shim
from relay import cli as relay_cli
from relay import status as relay_status
from relay.announce import cli as announce_cli


@dataclass
class Command:
    name: str
    section: int
    summary: str
    parser: Callable[[], argparse.ArgumentParser]
    subcommands: dict[str, Callable[[], argparse.ArgumentParser]] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)   # man sections: title -> text
    see_also: tuple[str, ...] = ()


COMMANDS = [
    Command("anytun-relay", 8, "anycast tunnel endpoint and server, media relay, cluster sync",
            relay_cli.build_parser,
            {"status": relay_status.build_parser, "health": relay_status.health_parser,
             "drain": relay_status.drain_parser, "exabgp": announce_cli.build_parser,
             "check-config": relay_cli.check_config_parser},
            {"FILES": "/etc/anytun-relay/NAME.toml: the configuration of the node that "
             "anytun-relay@NAME.service runs (examples: /etc/anytun-relay/*.toml.example). "
             "Sections [process], [tunnel], [relay], [cluster] take the long options of their "
             "group with _ for -; a tunnel server uses [node], [defaults], [open_tunnel], "
             "[aarp] and [[connection]]. /var/lib/anytun-relay: seq files.",
             "CAPABILITIES": "Once its devices and sockets exist the daemon becomes -u/-g "
             "and keeps only what its modes still need: CAP_NET_ADMIN for a tunnel server "
             "with kernel routes (tun), open tunnel mode and the open tunnel handover; "
             "CAP_NET_BIND_SERVICE for relay ports below 1024; nothing for a point-to-point "
             "tunnel or relay mode on high ports. It logs what it keeps and why.",
             "SYSTEMD": "Type=notify: READY=1 once every service runs, RELOADING=1 on SIGHUP, "
             "STOPPING=1, WATCHDOG=1 pings from the event loop. Under systemd it logs to the "
             "journal with priorities, without timestamps of its own.",
             "ENVIRONMENT": "ANYTUN_RELAY_CRYPTO=auto|builtin|openssl: the C data plane's "
             "crypto -- AES-NI and SHA-NI where the CPU has them (auto, the default; builtin "
             "insists), or OpenSSL's libcrypto (openssl; auto on other CPUs). anytun-relay "
             "status --json shows the choice.",
             "EXIT STATUS": "0 clean stop; 2 a mistake in options or configuration (one "
             "line on stderr); 1 another failure. A daemonizing anytun-relay exits only once "
             "every service runs, with the child's status if it could not start."},
            ("anytun(8)", "uanytun(8)", "aarp-responder(8)")),
    Command("aarp-responder", 8, "answer AARP probes for this server's anycast addresses",
            responder.build_parser, {},
            {"FILES": "/etc/aarp.conf (AARP_CONF): addresses, key, port, log level; "
             "/etc/default/aarp-responder: AARP_RESPONDER_OPTS of aarp-responder.service.",
             "SYSTEMD": "Type=notify with watchdog; CAP_NET_RAW (ICMP answers) is given up "
             "once the sockets are open."},
            ("aarp-resolve(1)", "aarp-shim(1)", "anytun-relay(8)")),
    Command("aarp-resolve", 1, "resolve anycast addresses to the unicast address that "
            "answers them", resolve.build_parser, {},
            {"FILES": "/etc/aarp.conf (AARP_CONF), AARP_* environment variables."},
            ("aarp-shim(1)", "aarp-responder(8)")),
    Command("aarp-shim", 1, "run a program with libaarp.so preloaded", shim.build_parser, {},
            {"DESCRIPTION2": "LD_PRELOAD=libaarp.so CMD does the same: the library is "
             "installed where the dynamic loader finds it by its bare name.",
             "FILES": "/etc/aarp.conf (AARP_CONF), AARP_* environment variables."},
            ("aarp-resolve(1)", "aarp-responder(8)", "ld.so(8)")),
]


# -- man ------------------------------------------------------------------------------------------
def _roff(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + ln) if ln[:1] in ".'" else ln for ln in text.splitlines())


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if not action.help or action.help == argparse.SUPPRESS:
        return ""
    return parser._get_formatter()._expand_help(action)


def _options(parser: argparse.ArgumentParser) -> list[str]:
    out: list[str] = []
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if a.help != argparse.SUPPRESS]
        if not actions:
            continue
        title = group.title or "options"
        out.append(f'.SS "{_roff(title[0].upper() + title[1:])}"')
        if group.description:
            out.append(_roff(group.description))
        for a in actions:
            if a.option_strings:
                metavar = "" if a.nargs == 0 else " " + (a.metavar or a.dest.upper())
                names = ", ".join(f"\\fB{_roff(o)}\\fR" for o in a.option_strings)
                out += [".TP", names + (f" \\fI{_roff(metavar.strip())}\\fR" if metavar else "")]
            else:
                out += [".TP", f"\\fI{_roff(a.metavar or a.dest)}\\fR"]
            out.append(_roff(_help(parser, a)))
    return out


def _usage(parser: argparse.ArgumentParser) -> str:
    first, *rest = parser.format_usage().removeprefix("usage: ").strip().splitlines()
    return _roff("\n".join([first, *("    " + ln.strip() for ln in rest)]))


def man_page(cmd: Command, date: str) -> str:
    parser = cmd.parser()
    lines = [f'.TH "{cmd.name.upper()}" "{cmd.section}" "{date}" "anycast-toolkit '
             f'{__version__}" "anycast-toolkit"', ".SH NAME", f"{cmd.name} \\- {cmd.summary}",
             ".SH SYNOPSIS", ".nf", _usage(parser)]
    for make in cmd.subcommands.values():
        lines.append(_usage(make()))
    lines += [".fi", ".SH DESCRIPTION", _roff(parser.description or "")]
    if "DESCRIPTION2" in cmd.extra:
        lines += [".PP", _roff(cmd.extra["DESCRIPTION2"])]
    if parser.epilog:
        lines += [".PP", _roff(parser.epilog)]
    lines += [".SH OPTIONS", *_options(parser)]
    if cmd.subcommands:
        lines.append(".SH COMMANDS")
        for name, make in cmd.subcommands.items():
            sub = make()
            lines += [f'.SS "{cmd.name} {name}"', _roff(sub.description or "")]
            if sub.epilog:
                lines += [".PP", _roff(sub.epilog)]
            lines += [x for x in _options(sub) if not x.startswith(".SS")]
    for title, text in cmd.extra.items():
        if title != "DESCRIPTION2":
            lines += [f'.SH "{title}"', _roff(text)]
    lines += [".SH SEE ALSO", ", ".join(f"\\fB{_roff(s.split('(')[0])}\\fR({s.split('(')[1]}"
                                         for s in cmd.see_also)]
    return "\n".join(lines) + "\n"


# -- bash completion ------------------------------------------------------------------------------
_FILEISH = re.compile(r"PATH|FILE|PEM|SCRIPT|SOCKET")


def _completion(cmd: Command) -> str:
    parsers = {"": cmd.parser(), **{n: m() for n, m in cmd.subcommands.items()}}
    fn = "_" + re.sub(r"\W", "_", cmd.name)
    body = []
    for sub, parser in parsers.items():
        opts, files, choices = [], [], []
        for a in parser._actions:
            if a.help == argparse.SUPPRESS or not a.option_strings:
                continue
            opts += a.option_strings
            if a.nargs == 0:
                continue
            pattern = "|".join(a.option_strings)
            if a.choices:
                choices.append(f'        {pattern}) COMPREPLY=($(compgen -W "'
                               f'{" ".join(map(str, a.choices))}" -- "$cur")); return;;')
            elif _FILEISH.search(a.metavar or "") or a.dest in ("chroot", "write_pid", "config"):
                files.append(pattern)
            else:
                choices.append(f"        {pattern}) return;;")   # a value: nothing to offer
        cases = list(choices)
        if files:
            cases.append(f'        {"|".join(files)}) COMPREPLY=($(compgen -f -- "$cur")); '
                         "return;;")
        positional_files = any(not a.option_strings and a.dest not in ("command", "targets")
                               for a in parser._actions if a.help != argparse.SUPPRESS)
        body.append(f'    {sub or "*"})\n      case $prev in\n' + "\n".join(cases) +
                    "\n      esac\n"
                    f'      if [[ $cur == -* ]]; then COMPREPLY=($(compgen -W "{" ".join(opts)}"'
                    ' -- "$cur")); return; fi\n'
                    + ('      COMPREPLY=($(compgen -f -- "$cur"))\n' if positional_files or
                       (not sub and cmd.name == "aarp-shim") else "")
                    + "      ;;")
    subs = " ".join(cmd.subcommands)
    first = (f'  if [[ $COMP_CWORD -eq 1 && $cur != -* ]]; then\n'
             f'    COMPREPLY=($(compgen -W "{subs}" -- "$cur")); return\n  fi\n'
             if subs else "")
    pick = (f'  local sub=""\n  [[ " {subs} " == *" ${{COMP_WORDS[1]}} "* ]] && '
            'sub=${COMP_WORDS[1]}\n' if subs else '  local sub=""\n')
    return (f"# bash completion for {cmd.name} (generated from its --help)\n"
            f"{fn}() {{\n  local cur=${{COMP_WORDS[COMP_CWORD]}} "
            f"prev=${{COMP_WORDS[COMP_CWORD-1]}}\n  COMPREPLY=()\n{first}{pick}"
            '  case $sub in\n' + "\n".join(
                b.replace("    *)", '    "")', 1) if b.startswith("    *)") else b
                for b in body) +
            f"\n  esac\n}}\ncomplete -o default -F {fn} {cmd.name}\n")


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("man", "completion"):
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))
    date = time.strftime("%Y-%m-%d", time.gmtime(epoch))
    for cmd in COMMANDS:
        if argv[0] == "man":
            (out / f"{cmd.name}.{cmd.section}").write_text(man_page(cmd, date))
        else:
            (out / cmd.name).write_text(_completion(cmd))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
