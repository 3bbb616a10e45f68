"""The `jobworker-pki` console script: argument parsing and messages."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from jobworker.pki.certs import CA_DAYS, LEAF_DAYS, ROLES, SERVER_HOSTS, PKIError
from jobworker.pki.commands import init, issue, renew


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 3650:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days (0-3650]")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobworker-pki", description="Create and extend a development PKI."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    init_cmd = commands.add_parser(
        "init", help="create both CAs, a server certificate, alice, bob and carol"
    )
    init_cmd.add_argument("directory")
    init_cmd.add_argument(
        "--host",
        action="append",
        dest="hosts",
        metavar="NAME",
        help="DNS name or IP address of the server (repeatable)"
        f" [default: {', '.join(SERVER_HOSTS)}]",
    )
    init_cmd.add_argument("--ca-days", type=_days, default=CA_DAYS)
    init_cmd.add_argument("--days", type=_days, default=LEAF_DAYS)
    issue_cmd = commands.add_parser("issue", help="issue one client certificate")
    issue_cmd.add_argument("directory")
    issue_cmd.add_argument("--name", required=True, help="identity (CN)")
    issue_cmd.add_argument("--role", required=True, choices=ROLES, help="role (OU)")
    issue_cmd.add_argument("--days", type=_days, default=LEAF_DAYS)
    renew_cmd = commands.add_parser(
        "renew",
        help="re-issue a certificate (new key) for the same identity and role,"
        " or for the server the same hosts",
    )
    renew_cmd.add_argument("directory")
    renew_cmd.add_argument("--name", required=True, help="server, or a client's CN")
    renew_cmd.add_argument(
        "--host",
        action="append",
        dest="hosts",
        metavar="NAME",
        help="with --name server: new hosts, instead of the old ones (repeatable)",
    )
    renew_cmd.add_argument("--days", type=_days, default=LEAF_DAYS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The `jobworker-pki` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "init":
            init(
                args.directory,
                hosts=args.hosts or SERVER_HOSTS,
                ca_days=args.ca_days,
                days=args.days,
            )
            print(f"created a development PKI in {args.directory}")
        elif args.command == "renew":
            pair = renew(args.directory, args.name, days=args.days, hosts=args.hosts)
            print(
                f"renewed {args.name} in {args.directory}, valid until"
                f" {pair.cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
            )
        else:
            issue(args.directory, args.name, args.role, days=args.days)
            print(f"issued {args.name} ({args.role}) in {args.directory}")
    except (PKIError, OSError) as error:
        print(f"jobworker-pki: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
