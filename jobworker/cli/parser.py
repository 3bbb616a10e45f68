"""The `jobworker` command line: global options, commands and job limits.

A usage error prints one line, `jobworker: <what is wrong> (see 'jobworker
COMMAND --help')`, naming the command whose line it is, and exits with
status 2, like every other error of the CLI. The global options (`--server`,
the TLS files, `--connect-timeout`) are accepted before or after the command.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any, NoReturn

from jobworker import defaults
from jobworker.cli.formatting import STATE_NAMES
from jobworker.cli.logs import InvalidSince, parse_since
from jobworker.errors import InvalidRequest
from jobworker.job.environment import check_name
from jobworker.limits import LIMITS, Limit
from jobworker.units import InvalidNumber, positive

EPILOG = """\
The server address and TLS files may also come from the environment:
JOBWORKER_SERVER, JOBWORKER_CA, JOBWORKER_CERT, JOBWORKER_KEY (flags win).
Exit status: 0 success, 1 the request failed (one line on stderr), 2 usage
error; `run` and `wait` exit with the job's code, or 128+N if signal N
killed it (`wait` with several jobs: the last one's; 1 if one is not found).
"""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one `jobworker: ...` line, status 2."""

    commands: dict[str, Parser]
    """Each command's parser, by name (set by `build_parser`)."""

    def error(self, message: str) -> NoReturn:
        # "argument --memory: --memory 1 is below...": the option once.
        name, _, rest = message.partition(": ")
        if name.startswith("argument ") and rest.startswith(f"{name[9:]} "):
            message = rest
        print(f"jobworker: {message} ({help_hint(self.prog)})", file=sys.stderr)
        raise SystemExit(2)


def help_hint(prog: str) -> str:
    """Where to read about `prog`: "see 'jobworker run --help'"."""
    return f"see '{prog} --help'"


def version() -> str:
    """The installed jobworker's version."""
    try:
        return metadata.version("jobworker")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a checkout
        return "unknown"


def _argument_type(parse: Callable[[str], float | int]) -> argparse._ActionType:
    """`parse` as an argparse type: its `InvalidNumber` is a usage error."""

    def argument(text: str) -> float | int:
        try:
            return parse(text)
        except InvalidNumber as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return argument


def _limit_type(limit: Limit) -> argparse._ActionType:
    """A limit as typed, also checked against the values any job may have."""

    def argument(text: str) -> float | int:
        try:
            value = limit.parse(text)
        except InvalidNumber as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        why = limit.out_of_range(value)
        if why is not None:
            # Said as typed: "--memory 1 is below the minimum, 1M".
            raise argparse.ArgumentTypeError(f"--{limit.flag} {text} {why}")
        return value

    return argument


def _lines(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise InvalidNumber(f"{text!r} is not a whole number") from None
    if value < 0:
        raise InvalidNumber(f"{text!r} must be 0 or more")
    return value


def _since(text: str) -> float:
    try:
        return parse_since(text, time.time())
    except InvalidSince as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _grace(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more seconds")
    return value


def _env_var(text: str) -> tuple[str, str]:
    """`NAME=VALUE`, or `NAME` for the caller's own value of NAME."""
    name, equals, value = text.partition("=")
    try:
        check_name(name)
    except InvalidRequest as error:
        raise argparse.ArgumentTypeError(f"-e {text}: {error}") from None
    if not equals:
        if name not in os.environ:
            raise argparse.ArgumentTypeError(
                f"-e {name}: {name} is not set here (give -e {name}=VALUE)"
            )
        value = os.environ[name]
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(
            f"-e {name}: the value is not valid UTF-8"
        ) from None
    return name, value


def _limit_options() -> Parser:
    limits = Parser(add_help=False)
    limits.add_argument(
        "-i",
        "--stdin",
        action="store_true",
        help="send our stdin to the job's as it comes (our EOF is its EOF);"
        " without -i the job's stdin is empty",
    )
    limits.add_argument(
        "-e",
        "--env",
        action="append",
        type=_env_var,
        default=[],
        metavar="NAME=VALUE",
        help="set NAME in the job's environment (repeatable; NAME alone: its"
        " value here); on top of the job's clean one: PATH, HOME, LANG",
    )
    group = limits.add_argument_group(
        "LIMITS (the server's default when not given)",
        "SIZE is bytes, or a number with K, M, G or T (base 1024)."
        " This server's defaults and maximums: jobworker limits.",
    )
    for limit in LIMITS:
        group.add_argument(
            f"--{limit.flag}",
            dest=limit.name,
            type=_limit_type(limit),
            metavar=limit.unit.metavar,
            help=f"{limit.help}, e.g. {limit.example}",
        )
    limits.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar="PROG [ARG...]",
        help="after --: the program (looked up in the job's PATH), its arguments",
    )
    return limits


def _global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """The connection options; after the command they leave unset ones alone."""
    group = parser.add_argument_group("connection (before or after the command)")

    def default(value: object) -> object:
        # A command's copy must not overwrite what was given before it.
        return value if top else argparse.SUPPRESS

    group.add_argument(
        "--server",
        metavar="HOST:PORT",
        default=default(None),
        help=f"the server [default: {defaults.LISTEN}]",
    )
    for name, what in (
        ("ca", "CA of the server certificate"),
        ("cert", "your client certificate"),
        ("key", "your client certificate's key"),
    ):
        group.add_argument(
            f"--{name}", metavar="FILE", default=default(None), help=what
        )
    group.add_argument(
        "--connect-timeout",
        type=_argument_type(positive(float)),
        default=default(defaults.CONNECT_TIMEOUT),
        metavar="SECONDS",
        help=f"give up connecting after [default: {defaults.CONNECT_TIMEOUT:g}]",
    )


def parse_command_line(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse `argv`; a usage error exits 2, named after the command it is in."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        words = " ".join(extras)
        command = parser.commands.get(getattr(args, "name", None) or "", parser)
        command.error(f"unrecognized arguments: {words}")
    return args


def build_parser() -> Parser:
    """The whole `jobworker` command line; `.commands` holds each command's."""
    parser = Parser(
        prog="jobworker",
        description="Run and follow jobs on a jobworker server.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"jobworker {version()}")
    _global_options(parser, top=True)
    connection = Parser(add_help=False)
    _global_options(connection, top=False)
    commands = parser.add_subparsers(
        dest="name", metavar="COMMAND", required=True, parser_class=Parser
    )
    parser.commands = {}

    def command(name: str, what: str, **kw: Any) -> Parser:
        sub: Parser = commands.add_parser(
            name,
            parents=[connection, *kw.pop("parents", [])],
            help=what,
            description=f"{what[0].upper()}{what[1:]}.",
            **kw,
        )
        parser.commands[name] = sub
        return sub

    limits = _limit_options()
    for name, what in (
        ("start", "start a job, print its id"),
        ("run", "start a job, stream its output, exit with its code"),
    ):
        start = command(
            name,
            what,
            parents=[limits],
            usage=f"jobworker {name} [-i] [-e NAME=VALUE]... [LIMITS]"
            " [--request-id ID] -- PROG [ARG...]",
        )
        start.add_argument(
            "--request-id",
            metavar="ID",
            help="makes a retry safe: a start you made with this ID before"
            " starts nothing and gives that job",
        )
    status = command("status", "show jobs")
    status.add_argument(
        "--json",
        action="store_true",
        help="print a JSON object (an array of them for several jobs)",
    )
    _job_ids(status)
    stop = command("stop", "stop jobs, wait for them to end")
    stop.add_argument(
        "--grace",
        type=_grace,
        metavar="SECONDS",
        help="between SIGTERM and SIGKILL [default: the server's]",
    )
    _job_ids(stop)
    wait = command(
        "wait",
        "wait for jobs to end, exit with the last one's code",
    )
    _job_ids(wait)
    rm = command(
        "rm",
        "remove ended jobs now: their status, output and record (prints each"
        " id removed; a running job is refused, stop it first)",
    )
    _job_ids(rm)
    logs = command("logs", "print a job's output from the start")
    logs.add_argument(
        "-f", "--follow", action="store_true", help="keep following until the job ends"
    )
    logs.add_argument(
        "-n",
        "--tail",
        type=_argument_type(_lines),
        metavar="N",
        help="only the last N lines (of stdout and stderr together)",
    )
    logs.add_argument(
        "--since",
        metavar="DURATION|TIME",
        type=_since,
        help="only output since then: 90s, 5m, 1h30m ago, or 2024-05-01T12:00:00Z",
    )
    logs.add_argument(
        "-t",
        "--timestamps",
        action="store_true",
        help="start each line with when the server read it (UTC)",
    )
    logs.add_argument("job_id", metavar="JOB_ID")
    listing = command("list", "list the jobs you may see, oldest first")
    shown = listing.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true", help="print a JSON array")
    shown.add_argument(
        "-q", "--quiet", action="store_true", help="print only the ids, in full"
    )
    listing.add_argument(
        "--no-trunc",
        action="store_true",
        help="whole ids and commands (otherwise cut to the terminal's width)",
    )
    listing.add_argument(
        "--state",
        action="append",
        choices=list(STATE_NAMES),
        help="only jobs in this state (repeatable)",
    )
    listing.add_argument(
        "--owner", metavar="NAME", help="only this owner's jobs (admins)"
    )
    server_limits = command("limits", "show this server's defaults and maximums")
    server_limits.add_argument(
        "--json", action="store_true", help="print a JSON object"
    )
    completion = command(
        "completion",
        "print a shell completion script: source <(jobworker completion bash)",
    )
    completion.add_argument("shell", choices=["bash", "zsh"])
    return parser


def _job_ids(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_ids", nargs="+", metavar="JOB_ID")
