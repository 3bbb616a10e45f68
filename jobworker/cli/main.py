"""The `jobworker` command: start, run, follow, stop, list and remove remote jobs.

Exit codes: 0 success; 1 the server refused or failed the request, or could
not be reached (one line `jobworker: ...` on stderr); 2 usage errors. `run`
and `wait` exit with the job's own code, or 128+N when a signal N killed
it, and say on stderr when it was OOM-killed, stopped or killed by a signal;
a job that was lost (its server died while it ran) is 1, said too.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import stat
import sys
import time
from collections.abc import Callable, Sequence
from typing import NoReturn

# Before grpc is first imported: grpc-core must not write its own log lines
# to our stderr; every failure is reported once, in our words.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

from jobworker.cli import formatting as cli_format
from jobworker.cli.client import Client, ClientConfig, ClientError, JobNotFoundError
from jobworker.cli.completion import SCRIPTS
from jobworker.cli.input import InputSender, stdin_pieces
from jobworker.cli.logs import LinePrefixer
from jobworker.cli.parser import build_parser, help_hint, parse_command_line
from jobworker.limits import LIMITS, limits_to_pb
from jobworker.model import Limits, Stream
from jobworker.untrusted import printable
from jobworker.v1 import jobworker_pb2 as pb

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _say(message: str) -> None:
    """One line on stderr; what the server or a job said is made printable."""
    print(f"jobworker: {printable(message)}", file=sys.stderr, flush=True)


def _limits(args: argparse.Namespace) -> pb.Limits:
    return limits_to_pb(
        Limits(**{limit.name: getattr(args, limit.name) for limit in LIMITS})
    )


def _command(args: argparse.Namespace) -> list[bytes]:
    command: list[str] = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        name = f"jobworker {args.name}"
        raise UsageError(
            f"no command given: {name} [LIMITS] -- PROG [ARG...] ({help_hint(name)})"
        )
    return [os.fsencode(arg) for arg in command]


class UsageError(ClientError):
    """A command line that makes no sense; exit code 2."""

    exit_code = EXIT_USAGE


def copy_output(
    client: Client,
    job_id: str,
    *,
    follow: bool = True,
    tail: int | None = None,
    since: float | None = None,
    timestamps: bool = False,
) -> int:
    """Copy the job's stdout and stderr to ours, byte for byte, from the start.

    Follows until the job has ended, or without `follow` copies the output
    there is now; `tail` and `since` as `Client.output`; `timestamps`
    prefixes each line with when the server read it. Returns the count of
    the job's bytes copied.
    """
    out, err = sys.stdout.buffer, sys.stderr.buffer
    prefixer = LinePrefixer() if timestamps else None
    copied = 0
    chunks = client.output(
        job_id, tail=tail, since=since, timestamps=timestamps, follow=follow
    )
    for chunk in chunks:
        stream = Stream.STDERR if chunk.stream == pb.STREAM_STDERR else Stream.STDOUT
        target = err if stream == Stream.STDERR else out
        data = chunk.data
        if prefixer is not None:
            time = chunk.time.ToNanoseconds() / 1e9 if chunk.HasField("time") else None
            data = prefixer.prefixed(stream, data, time)
        target.write(data)
        target.flush()
        copied += len(chunk.data)
    return copied


def _start(client: Client, args: argparse.Namespace) -> pb.JobStatus:
    command, limits = _command(args), _limits(args)
    env: dict[str, str] = dict(args.env)
    if not args.stdin:
        _warn_about_stdin()
    try:
        return client.start(
            command, limits, env, stdin=args.stdin, request_id=args.request_id
        )
    except KeyboardInterrupt:
        _say("interrupted while starting; the job may be running (see: jobworker list)")
        raise SystemExit(EXIT_INTERRUPTED) from None


def _stdin_ignored() -> bool:
    """Whether input waits on our stdin (a pipe, a file) that no job gets.

    A terminal, /dev/null, a closed stdin or an empty pipe at its end lose
    nothing; a pipe whose writer is still open may yet bring input.
    """
    try:
        info = os.fstat(sys.stdin.fileno())
    except (OSError, ValueError):
        return False
    if stat.S_ISREG(info.st_mode):
        return info.st_size > 0
    if not (stat.S_ISFIFO(info.st_mode) or stat.S_ISSOCK(info.st_mode)):
        return False
    poller = select.poll()
    poller.register(sys.stdin.fileno(), select.POLLIN)
    events = poller.poll(0)
    return not events or any(mask & select.POLLIN for _, mask in events)


def _warn_about_stdin() -> None:
    if _stdin_ignored():
        _say(
            "warning: standard input is not sent to the job (its stdin is empty;"
            " -i sends it)"
        )


def cmd_start(client: Client, args: argparse.Namespace) -> int:
    job = _start(client, args)
    print(job.id, flush=True)
    if args.stdin:
        try:
            client.write_input(job.id, stdin_pieces())
        except KeyboardInterrupt:
            _say(f"input to job {job.id} ended (interrupted); the job goes on")
            return EXIT_INTERRUPTED
    return 0


def cmd_run(client: Client, args: argparse.Namespace) -> int:
    job = _start(client, args)
    sender = InputSender(client, job.id, _say).start() if args.stdin else None
    try:
        copy_output(client, job.id)
    except KeyboardInterrupt:
        _say(
            f"stopped following job {job.id}; it is still running"
            f" (stop it with: jobworker stop {job.id})"
        )
        return EXIT_INTERRUPTED
    finally:
        if sender is not None:
            sender.done()
    return _ended(client.status(job.id))


def _ended(job: pb.JobStatus) -> int:
    """The exit status `run` and `wait` give for a job, its note said."""
    code = cli_format.exit_status(job)
    note = cli_format.ending_note(job)
    if code is None:
        state = cli_format.state_name(job)
        _say(note or f"job {job.id} is {state} but its output ended")
        return EXIT_FAILED
    if note is not None:
        _say(note)
    return code


def cmd_wait(client: Client, args: argparse.Namespace) -> int:
    job_ids: list[str] = args.job_ids
    try:
        jobs = _found(client.wait_all(job_ids))
    except KeyboardInterrupt:
        named = " ".join(job_ids)
        _say(f"stopped waiting for {named}; nothing was stopped")
        return EXIT_INTERRUPTED
    codes = [_ended(job) for job in jobs]
    if len(jobs) < len(job_ids):
        return EXIT_FAILED
    return codes[-1]


def _found(results: Sequence[pb.JobStatus | ClientError]) -> list[pb.JobStatus]:
    """The statuses among `results`; each "not found" said, any other raised."""
    jobs = []
    for result in results:
        if isinstance(result, JobNotFoundError):
            _say(str(result))
        elif isinstance(result, ClientError):
            raise result
        else:
            jobs.append(result)
    return jobs


def _show(jobs: list[pb.JobStatus], *, as_json: bool, several: bool) -> None:
    if as_json:
        values = [cli_format.job_json(job) for job in jobs]
        print(cli_format.dumps(values if several else values[0]))
    else:
        print("\n\n".join(cli_format.summary(job) for job in jobs))


def _statuses(
    client: Client, job_ids: Sequence[str]
) -> list[pb.JobStatus | ClientError]:
    results: list[pb.JobStatus | ClientError] = []
    for job_id in job_ids:
        try:
            results.append(client.status(job_id))
        except JobNotFoundError as error:
            results.append(error)
    return results


def cmd_status(client: Client, args: argparse.Namespace) -> int:
    job_ids: list[str] = args.job_ids
    jobs = _found(_statuses(client, job_ids))
    if jobs:
        _show(jobs, as_json=args.json, several=len(job_ids) > 1)
    return 0 if len(jobs) == len(job_ids) else EXIT_FAILED


def cmd_stop(client: Client, args: argparse.Namespace) -> int:
    job_ids: list[str] = args.job_ids
    try:
        jobs = _found(client.stop_all(job_ids, args.grace))
    except KeyboardInterrupt:
        named = " ".join(job_ids)
        jobs_are = "job {} is" if len(job_ids) == 1 else "jobs {} are"
        _say(
            f"stopped waiting; {jobs_are.format(named)} still being stopped"
            f" (see: jobworker status {named})"
        )
        return EXIT_INTERRUPTED
    if jobs:
        _show(jobs, as_json=False, several=len(job_ids) > 1)
    return 0 if len(jobs) == len(job_ids) else EXIT_FAILED


def cmd_rm(client: Client, args: argparse.Namespace) -> int:
    """Remove each job in turn: its id on stdout, or why not on stderr."""
    failed = 0
    for job_id in args.job_ids:
        try:
            job = client.remove(job_id)
        except ClientError as error:
            _say(str(error))
            failed += 1
        else:
            print(job.id, flush=True)
    return EXIT_FAILED if failed else 0


def cmd_logs(client: Client, args: argparse.Namespace) -> int:
    copy_output(
        client,
        args.job_id,
        follow=args.follow,
        tail=args.tail,
        since=args.since,
        timestamps=args.timestamps,
    )
    return 0


def _terminal_width() -> int | None:
    """The width to cut `list` rows to: the terminal's, or $COLUMNS; else none."""
    if os.environ.get("COLUMNS") or sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return None


def cmd_list(client: Client, args: argparse.Namespace) -> int:
    states = [cli_format.STATE_NAMES[name] for name in args.state or ()]
    jobs = client.list(states, args.owner or "")
    if args.quiet:
        for job in jobs:
            print(job.id)
    elif args.json:
        print(cli_format.dumps([cli_format.job_json(job) for job in jobs]))
    else:
        width = _terminal_width()
        print(cli_format.table(jobs, now=time.time(), width=width, full=args.no_trunc))
    return 0


def cmd_limits(client: Client, args: argparse.Namespace) -> int:
    reply = client.get_limits()
    if args.json:
        print(cli_format.dumps(cli_format.limits_json(reply)))
    else:
        print(cli_format.limits_table(reply))
    return 0


COMMANDS: dict[str, Callable[[Client, argparse.Namespace], int]] = {
    "start": cmd_start,
    "run": cmd_run,
    "status": cmd_status,
    "stop": cmd_stop,
    "wait": cmd_wait,
    "logs": cmd_logs,
    "rm": cmd_rm,
    "list": cmd_list,
    "limits": cmd_limits,
}


def _quiet_broken_pipe() -> NoReturn:
    """Our reader went away (`jobworker logs ID | head`): leave quietly."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    raise SystemExit(EXIT_FAILED)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `jobworker` command; returns the process exit code."""
    args = parse_command_line(argv)
    if args.name == "completion":  # needs no server
        parser = build_parser()
        print(SCRIPTS[args.shell](parser, parser.commands), end="")
        return 0
    flags = {name: getattr(args, name) for name in ("server", "ca", "cert", "key")}
    try:
        config = ClientConfig.resolve(flags, os.environ, args.connect_timeout)
        client = Client(config)
    except ClientError as error:
        _say(str(error))
        return error.exit_code
    try:
        return COMMANDS[args.name](client, args)
    except ClientError as error:
        _say(str(error))
        return error.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _quiet_broken_pipe()
    finally:
        client.close()
