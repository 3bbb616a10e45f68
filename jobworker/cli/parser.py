"""The `jobworker` command line: global options, commands and job limits.

A usage error prints one line, `jobworker: <what is wrong> (...)`, and exits
with status 2, like every other error of the CLI.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import NoReturn

from jobworker.cli.client import DEFAULT_CONNECT_TIMEOUT, DEFAULT_SERVER
from jobworker.units import InvalidSize, parse_size

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


def _size(text: str) -> int:
    try:
        size = parse_size(text)
    except InvalidSize as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if size < 1:
        raise argparse.ArgumentTypeError("must be at least 1 byte")
    return size


def _positive(kind: type[int] | type[float]) -> argparse._ActionType:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
        return value

    parse.__name__ = kind.__name__
    return parse


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
    group = limits.add_argument_group("LIMITS (the server's default when not given)")
    group.add_argument(
        "--cpu", type=_positive(float), metavar="CPUS", help="CPUs, e.g. 0.5"
    )
    group.add_argument(
        "--memory",
        dest="memory_bytes",
        type=_size,
        metavar="SIZE",
        help="memory, bytes or with K/M/G (base 1024), e.g. 256M",
    )
    group.add_argument(
        "--io-read-bps", type=_size, metavar="SIZE", help="disk reads per second"
    )
    group.add_argument(
        "--io-write-bps", type=_size, metavar="SIZE", help="disk writes per second"
    )
    group.add_argument(
        "--pids", type=_positive(int), metavar="N", help="processes and threads"
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
        "--server", metavar="HOST:PORT", help=f"the server [default: {DEFAULT_SERVER}]"
    )
    parser.add_argument("--ca", metavar="FILE", help="CA of the server certificate")
    parser.add_argument("--cert", metavar="FILE", help="your client certificate")
    parser.add_argument("--key", metavar="FILE", help="your client certificate's key")
    parser.add_argument(
        "--connect-timeout",
        type=_positive(float),
        default=DEFAULT_CONNECT_TIMEOUT,
        metavar="SECONDS",
        help=f"give up connecting after [default: {DEFAULT_CONNECT_TIMEOUT:g}]",
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
