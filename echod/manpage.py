"""Man pages echod(8) and echod-bench(1), written from the option tables.

The options come from :data:`echod.config.OPTIONS` and from echod-bench's argument
parser (itself built from :data:`loadtest.params.OPTIONS`), so a new option reaches
the pages by running ``python -m echod.manpage``; ``--check`` fails when the pages
in ``docs/man`` are stale (a test runs it). The pages carry no date, so the same
tables always give the same bytes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from echod import __version__
from echod.config import OPTIONS

PAGES_DIR = Path(__file__).resolve().parent.parent / "docs" / "man"


def escape(text: str) -> str:
    """Text safe in a roff line: backslashes and hyphens escaped, no control lines.

    A hyphen is ``\\-`` so ``--port`` stays an ASCII minus that can be searched and
    pasted (man-pages(7)); a leading ``.`` or ``'`` would be read as a request.
    """
    text = text.replace("\\", "\\e").replace("-", "\\-")
    if text.startswith((".", "'")):
        text = "\\&" + text
    return text


def _paragraphs(items: Iterable[tuple[str, str]]) -> list[str]:
    """Tagged paragraphs: the tag in bold, the body indented under it."""
    lines: list[str] = []
    for tag, body in items:
        lines += [".TP", tag, escape(body)]
    return lines


def _flag(flag: str, metavar: str | None) -> str:
    bold = f"\\fB{escape(flag)}\\fR"
    return f"{bold} \\fI{escape(metavar)}\\fR" if metavar else bold


def _other_flags(parser: argparse.ArgumentParser, known: set[str]) -> list[tuple[str, str]]:
    """Flags the parser has beyond the table's (``--version``, ``--list-backends``)."""
    found = []
    for action in parser._actions:  # argparse's own help formatter walks the same list
        flags = [f for f in action.option_strings if f.startswith("--")]
        if not flags or flags[0] in known or action.help in (None, argparse.SUPPRESS):
            continue
        metavar = action.metavar if isinstance(action.metavar, str) else None
        if metavar is None and action.nargs != 0:
            metavar = (action.dest or "").upper()
        found.append((_flag(flags[0], metavar), str(action.help)))
    return found


def echod_page(version: str = __version__) -> str:
    from echod.cli import build_parser

    options = []
    for option in OPTIONS:
        body = option.help
        if option.choices:
            body += f"; one of {', '.join(option.choices)}"
        body += f". Default: {option.shown_default}. Environment: {option.env}."
        options.append((_flag(option.flag, option.metavar), body.replace("—", "none")))
    others = _other_flags(build_parser(), {option.flag for option in OPTIONS})
    lines = [
        f'.TH ECHOD 8 "" "echod {escape(version)}" "System Administration"',
        ".SH NAME",
        "echod \\- TCP echo server (RFC 862)",
        ".SH SYNOPSIS",
        ".B echod",
        "[\\fIOPTION\\fR]...",
        ".SH DESCRIPTION",
        ".B echod",
        escape(
            "sends back every byte a client sends, in order and unchanged, as RFC 862 "
            "describes. It serves until SIGTERM or SIGINT, then stops accepting, lets open "
            "connections finish for up to --graceful-timeout seconds and exits 0; a second "
            "SIGINT exits at once. SIGUSR1 logs the counters. With --workers above 1, "
            "--metrics or --config a supervisor forks the workers, restarts one that dies, "
            "alone talks to systemd, reloads the configuration on SIGHUP and upgrades to "
            "the code now installed on SIGUSR2, with nothing refused or lost; without one "
            "SIGHUP and SIGUSR2 log a line and serving goes on. SIGUSR2 used to refresh "
            "systemd's STATUS= line; it now means upgrade. Settings come from the command "
            "line, then ECHOD_* variables, then the --config file (TOML whose keys are the "
            "option names, such as high_water), then the defaults."
        ),
        ".SH OPTIONS",
        escape("Each option can also be set in the environment; a flag wins over its variable."),
        *_paragraphs(options),
        *_paragraphs(others),
        ".SH ENVIRONMENT",
        ".TP",
        "\\fBECHOD_\\fIOPTION\\fR",
        escape("every option above, for example ECHOD_PORT=5000 or ECHOD_BACKEND=epoll."),
        ".TP",
        "\\fBLISTEN_FDS\\fR, \\fBLISTEN_FDNAMES\\fR, \\fBLISTEN_PID\\fR",
        escape(
            "sockets handed over by systemd socket activation (sd_listen_fds(3)); echod "
            "serves them instead of binding."
        ),
        ".TP",
        "\\fBNOTIFY_SOCKET\\fR, \\fBWATCHDOG_USEC\\fR",
        escape("readiness, status and watchdog messages to systemd (sd_notify(3))."),
        ".TP",
        "\\fBJOURNAL_STREAM\\fR",
        escape(
            "when it names stderr, log lines carry syslog priority prefixes instead of timestamps."
        ),
        ".SH EXIT STATUS",
        *_paragraphs(
            [
                ("0", "stopped by SIGTERM or SIGINT after the drain."),
                ("1", "an address could not be used (does not resolve, in use, permission)."),
                (
                    "2",
                    "a bad setting: an option, a variable or a --config file (a malformed "
                    "address, more workers than the ceiling), or an unavailable backend; "
                    "--check-config exits 0 or 2 the same way.",
                ),
            ]
        ),
        ".SH FILES",
        ".TP",
        escape("/etc/echod/echod.toml"),
        escape(
            "the settings the systemd units give with --config; SIGHUP (systemctl reload) "
            "re-reads it, after echod --check-config has accepted it; install.sh puts it "
            "there if absent."
        ),
        ".TP",
        escape("/etc/echod/echod.env"),
        escape(
            "ECHOD_* settings read by the systemd units, if it exists; they override the "
            "file, and a reload cannot change them."
        ),
        ".SH EXAMPLES",
        ".nf",
        escape("echod --backend epoll --port 5000"),
        escape("echod --listen '[::]:7' --listen unix:/run/echod.sock"),
        escape("ECHOD_WORKERS=auto echod --port 7000"),
        escape("echod --config /etc/echod/echod.toml --check-config && systemctl reload echod"),
        ".fi",
        ".SH SEE ALSO",
        "\\fBechod\\-bench\\fR(1), \\fBsystemd.socket\\fR(5), \\fBsd_notify\\fR(3), \\fBnc\\fR(1)",
    ]
    return "\n".join(lines) + "\n"


def bench_page(version: str = __version__) -> str:
    from loadtest.merge import build_parser as build_merge_parser
    from loadtest.params import build_parser

    parser = build_parser()
    merge = build_merge_parser()
    lines = [
        f'.TH ECHOD\\-BENCH 1 "" "echod {escape(version)}" "User Commands"',
        ".SH NAME",
        "echod\\-bench \\- load generator for TCP echo servers",
        ".SH SYNOPSIS",
        ".B echod\\-bench",
        "[\\fIOPTION\\fR]...",
        ".br",
        ".B echod\\-bench merge",
        "\\fIRESULT.json\\fR... [\\fB\\-\\-json\\fR \\fIFILE\\fR]",
        ".SH DESCRIPTION",
        ".B echod\\-bench",
        escape(
            "opens connections to an echo server from several processes, sends the chosen "
            "workload and checks every echoed byte against what was sent. It reports "
            "throughput, latency percentiles merged exactly across processes and, with "
            "--server-pid, the server's CPU per echoed message and memory. It needs the "
            "loadtest extra (pip install 'echod[loadtest]')."
        ),
        ".SH OPTIONS",
        *_paragraphs(_other_flags(parser, set())),
        ".SH MERGE",
        ".B echod\\-bench merge",
        escape(
            "adds the results of several runs: run one echod-bench per generator host "
            "against the same server with a common --start-at and --json, then merge the "
            "files. Histograms are added exactly (the merged percentiles are those of every "
            "message), counts and rates summed, and the windows must overlap. A file may be "
            "--json output or a --json-stream capture (its last result line is read)."
        ),
        *_paragraphs(_other_flags(merge, {"--help"})),
        ".PP",
        escape(merge.epilog or ""),
        ".SH EXIT STATUS",
        escape(parser.epilog or ""),
        ".SH EXAMPLES",
        ".nf",
        escape("echod-bench --host 127.0.0.1 --port 5000 --connections 1000 --duration 10"),
        escape("echod-bench --port 5000 --rate 20000 --connections 100 --json run.json"),
        escape("echod-bench merge gen1.json gen2.json gen3.json --json all.json"),
        ".fi",
        ".SH SEE ALSO",
        "\\fBechod\\fR(8)",
    ]
    return "\n".join(lines) + "\n"


def pages() -> dict[str, str]:
    return {"echod.8": echod_page(), "echod-bench.1": bench_page()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m echod.manpage", description="Write echod(8) and echod-bench(1)."
    )
    parser.add_argument("directory", nargs="?", type=Path, default=PAGES_DIR)
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a page is stale"
    )
    args = parser.parse_args(argv)
    stale = []
    for name, text in pages().items():
        path: Path = args.directory / name
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        stale.append(name)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if args.check and stale:
        print(
            f"man pages out of date: {', '.join(stale)}; run python -m echod.manpage",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
