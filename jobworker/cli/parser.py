"""The `jobworker` command line: global options, commands and job limits.

A usage error prints one line, `jobworker: <what is wrong> (...)`, and exits
with status 2, like every other error of the CLI.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import NoReturn

from jobworker import defaults
from jobworker.limits import LIMITS
from jobworker.units import InvalidNumber, positive

EPILOG = """\
The server address and TLS files may also come from the environment:
JOBWORKER_SERVER, JOBWORKER_CA, JOBWORKER_CERT, JOBWORKER_KEY (flags win).
Exit status: 0 success, 1 the request failed (one line on stderr), 2 usage
error; `run` exits with the job's code, or 128+N if signal N killed it.
"""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one `jobworker: ...` line, status 2."""

    def error(self, message: str) -> NoReturn:
        hint = f"see '{self.prog} --help'"
        print(f"jobworker: {message} ({hint})", file=sys.stderr)
        raise SystemExit(2)


def _argument_type(parse: Callable[[str], float | int]) -> argparse._ActionType:
    """`parse` as an argparse type: its `InvalidNumber` is a usage error."""

    def argument(text: str) -> float | int:
        try:
            return parse(text)
        except InvalidNumber as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return argument


def _grace(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more seconds")
    return value


def _limit_options() -> Parser:
    limits = Parser(add_help=False)
    group = limits.add_argument_group(
        "LIMITS (the server's default when not given)",
        "SIZE is bytes, or a number with K, M, G or T (base 1024).",
    )
    for limit in LIMITS:
        group.add_argument(
            f"--{limit.flag}",
            dest=limit.name,
            type=_argument_type(limit.parse),
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


def build_parser() -> argparse.ArgumentParser:
    """The whole `jobworker` command line."""
    parser = Parser(
        prog="jobworker",
        description="Run and follow jobs on a jobworker server.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--server",
        metavar="HOST:PORT",
        help=f"the server [default: {defaults.LISTEN}]",
    )
    parser.add_argument("--ca", metavar="FILE", help="CA of the server certificate")
    parser.add_argument("--cert", metavar="FILE", help="your client certificate")
    parser.add_argument("--key", metavar="FILE", help="your client certificate's key")
    parser.add_argument(
        "--connect-timeout",
        type=_argument_type(positive(float)),
        default=defaults.CONNECT_TIMEOUT,
        metavar="SECONDS",
        help=f"give up connecting after [default: {defaults.CONNECT_TIMEOUT:g}]",
    )
    commands = parser.add_subparsers(dest="name", metavar="COMMAND", required=True)
    limits = _limit_options()
    for name, what in (
        ("start", "start a job, print its id"),
        ("run", "start a job, stream its output, exit with its code"),
    ):
        commands.add_parser(
            name,
            parents=[limits],
            help=what,
            description=f"{what[0].upper()}{what[1:]}.",
            usage=f"jobworker {name} [LIMITS] -- PROG [ARG...]",
        )
    status = commands.add_parser("status", help="show a job")
    status.add_argument("--json", action="store_true", help="print a JSON object")
    status.add_argument("job_id", metavar="JOB_ID")
    stop = commands.add_parser("stop", help="stop a job, wait for it to end")
    stop.add_argument(
        "--grace",
        type=_grace,
        metavar="SECONDS",
        help="between SIGTERM and SIGKILL [default: the server's]",
    )
    stop.add_argument("job_id", metavar="JOB_ID")
    logs = commands.add_parser("logs", help="print a job's output from the start")
    logs.add_argument(
        "-f", "--follow", action="store_true", help="keep following until the job ends"
    )
    logs.add_argument("job_id", metavar="JOB_ID")
    listing = commands.add_parser("list", help="list the jobs you may see")
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    return parser
