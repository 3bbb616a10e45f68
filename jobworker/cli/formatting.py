"""How the CLI shows jobs: JSON objects, a one-job summary and a table.

Commands are bytes. In JSON each argument is decoded as UTF-8; a byte that is
not part of valid UTF-8 becomes the lone surrogate U+DC80+byte (Python's
"surrogateescape"), written as the JSON escape "\\udcXX", so
`os.fsencode(json.loads(text)["command"][i])` gives back the exact bytes. For
people, invalid bytes are shown as "\\xXX" and arguments are shell-quoted,
and every string that came from a certificate or a job (owner, command, the
server's messages) goes through `printable`: a terminal never gets a control
character it would obey ("\\x1b[2J", a newline that fakes a row).
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from jobworker.limits import LIMITS, limits_from_pb, limits_text
from jobworker.model import command_text
from jobworker.units import format_size, round_size
from jobworker.untrusted import printable
from jobworker.v1 import jobworker_pb2 as pb

_STATES = {
    pb.JOB_STATE_RUNNING: "running",
    pb.JOB_STATE_STOPPING: "stopping",
    pb.JOB_STATE_EXITED: "exited",
    pb.JOB_STATE_KILLED: "killed",
    pb.JOB_STATE_LOST: "lost",
}
STATE_NAMES = {name: state for state, name in _STATES.items()}
"""The states by the names `list --state` takes."""
SHORT_ID = 12
"""How many characters of an id `list` shows, as docker does."""
_MIN_COMMAND = 10


def state_name(job: pb.JobStatus) -> str:
    """ "running", "stopping", "exited", "killed" or "lost" ("unknown" otherwise)."""
    return _STATES.get(job.state, "unknown")


def exit_status(job: pb.JobStatus) -> int | None:
    """The shell's view of an ended job: its code, or 128+N for signal N."""
    if job.HasField("exit_code"):
        return job.exit_code
    if job.HasField("signal"):
        return 128 + job.signal
    return None


def _timestamp(job: pb.JobStatus, field: str, timespec: str) -> str | None:
    has = {
        "started_at": job.HasField("started_at"),
        "ended_at": job.HasField("ended_at"),
    }
    if not has[field]:
        return None
    stamp: Timestamp = getattr(job, field)
    moment = stamp.ToDatetime(tzinfo=UTC)
    return moment.isoformat(timespec=timespec).replace("+00:00", "Z")


def job_json(job: pb.JobStatus) -> dict[str, Any]:
    """The JSON object of `status --json` (and each element of `list --json`)."""
    return {
        "id": job.id,
        "owner": job.owner,
        "command": [arg.decode("utf-8", "surrogateescape") for arg in job.command],
        "state": state_name(job),
        "exit_code": job.exit_code if job.HasField("exit_code") else None,
        "signal": job.signal if job.HasField("signal") else None,
        "oom_killed": job.oom_killed,
        "stop_requested": job.stop_requested,
        "started_at": _timestamp(job, "started_at", "milliseconds"),
        "ended_at": _timestamp(job, "ended_at", "milliseconds"),
        "limits": asdict(limits_from_pb(job.limits)),
        "output_bytes": job.output_bytes,
        "output_truncated": job.output_truncated,
        "output_truncated_by": job.output_truncated_by or None,
        "usage": usage_json(job.usage),
        "request_id": job.request_id or None,
    }


USAGE_FIELDS = tuple(pb.JobUsage.DESCRIPTOR.fields_by_name)


def usage_json(usage: pb.JobUsage) -> dict[str, Any]:
    """Every usage field, None where the server does not know it."""
    known = {field.name: value for field, value in usage.ListFields()}
    return {name: known.get(name) for name in USAGE_FIELDS}


_USAGE_WORDS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("cpu_seconds", "cpu", lambda seconds: f"{seconds:.2f} s"),
    ("memory_peak_bytes", "memory peak", round_size),
    ("io_read_bytes", "read", round_size),
    ("io_write_bytes", "written", round_size),
    ("pids_peak", "pids peak", str),
)


def usage_text(usage: pb.JobUsage) -> str:
    """For people: "cpu 1.25 s, memory peak 12.1M, read 0, written 4.0K, pids
    peak 3"; "-" when nothing is known (a server without isolation)."""
    known = usage_json(usage)
    return (
        ", ".join(
            f"{words} {show(known[name])}"
            for name, words, show in _USAGE_WORDS
            if known[name] is not None
        )
        or "-"
    )


def dumps(value: Any) -> str:
    """JSON text, ASCII only (so escaped bytes survive any terminal or pipe)."""
    return json.dumps(value, ensure_ascii=True, indent=2)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def state_text(job: pb.JobStatus) -> str:
    """For the STATE column: the state, with how the job ended, and short.

    "exited 3", "killed SIGKILL (stop requested, OOM)"; the server's log says
    it in words instead (`jobworker.job.events.outcome_for_log`).
    """
    state = state_name(job)
    if job.HasField("exit_code"):
        state = f"{state} {job.exit_code}"
    elif job.HasField("signal"):
        state = f"{state} {_signal_name(job.signal)}"
    flags = [
        name
        for name, on in (
            ("stop requested", job.stop_requested),
            ("OOM", job.oom_killed),
        )
        if on
    ]
    return f"{state} ({', '.join(flags)})" if flags else state


def ending_note(job: pb.JobStatus) -> str | None:
    """For `run` and `wait`: one line when the job did not just exit.

    "job ID was killed by the OOM killer (memory limit 64M)", "job ID was
    stopped by a stop request (killed by SIGTERM)", "job ID was killed by
    SIGKILL", "job ID was lost: ..."; None for an exit on its own.
    """
    if job.state == pb.JOB_STATE_LOST:
        return (
            f"job {job.id} was lost: the server stopped while it ran,"
            " so how it ended is not known"
        )
    if job.HasField("signal"):
        how = f"killed by {_signal_name(job.signal)}"
    elif job.HasField("exit_code"):
        how = f"exit code {job.exit_code}"
    else:
        return None
    if job.oom_killed:
        memory = limits_from_pb(job.limits).memory_bytes
        limit = "" if memory is None else f", memory limit {format_size(memory)}"
        what = f"ran out of memory: killed by the OOM killer ({how}{limit})"
    elif job.stop_requested:
        what = f"was stopped by a stop request ({how})"
    elif job.HasField("signal"):
        what = f"was {how}"
    else:
        return None
    return f"job {job.id} {what}"


_TRUNCATED_BY = {
    "output-cap": "the job's output cap",
    "user-output-quota": "the owner's output quota",
    "min-free-disk": "the server's free-disk floor",
}


def truncation_text(cause: str) -> str:
    """Why output was dropped, for people: "truncated at the job's output cap"."""
    if not cause:
        return "truncated at a cap of the server"
    if cause in _TRUNCATED_BY:
        return f"truncated at {_TRUNCATED_BY[cause]} ({cause})"
    return f"truncated: the server could not store it: {printable(cause)}"


def summary(job: pb.JobStatus) -> str:
    """Several "name: value" lines about one job, for `status` and `stop`."""
    output = f"{job.output_bytes} bytes"
    if job.output_truncated:
        output += f", {truncation_text(job.output_truncated_by)}"
    rows = [
        ("id", job.id),
        ("owner", printable(job.owner)),
        ("command", printable(command_text(job.command))),
        ("state", state_text(job)),
        ("started", _timestamp(job, "started_at", "seconds") or "-"),
        ("ended", _timestamp(job, "ended_at", "seconds") or "-"),
        ("limits", limits_text(limits_from_pb(job.limits))),
        ("output", output),
        ("usage", usage_text(job.usage)),
    ]
    if job.request_id:
        rows.insert(3, ("request", printable(job.request_id)))
    return "\n".join(f"{name + ':':<9} {value}" for name, value in rows)


def span(seconds: float) -> str:
    """A length of time for people, in one unit: "5 s", "2 min", "3 h", "4 d"."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} s"


def _seconds(stamp: Timestamp) -> float:
    return stamp.ToNanoseconds() / 1e9


def _cut(text: str, room: int) -> str:
    if len(text) <= room:
        return text
    return text[: max(room, _MIN_COMMAND) - 1] + "\u2026"


def table(
    jobs: list[pb.JobStatus], *, now: float, width: int | None, full: bool
) -> str:
    """A header and one line per job, in columns, for `list`.

    Short ids and the command cut to `width` unless `full`; ages and
    durations against `now` (a running job's duration is so far).
    """
    header = ("ID", "OWNER", "STATE", "STARTED", "DURATION", "COMMAND")
    rows = []
    for job in jobs:
        started = _seconds(job.started_at)
        ended = _seconds(job.ended_at) if job.HasField("ended_at") else now
        rows.append(
            (
                job.id if full else job.id[:SHORT_ID],
                printable(job.owner),
                state_text(job),
                f"{span(now - started)} ago",
                span(ended - started),
                printable(command_text(job.command)),
            )
        )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(5)]
    lines = []
    for row in [header, *rows]:
        head = "  ".join(
            cell.ljust(size) for cell, size in zip(row[:5], widths, strict=True)
        )
        command = row[5]
        if width is not None and not full:
            command = _cut(command, width - len(head) - 2)
        lines.append(f"{head}  {command}")
    return "\n".join(lines)


_LIMIT_KINDS = ("defaults", "maximums", "minimums")


def limits_json(reply: pb.GetLimitsResponse) -> dict[str, Any]:
    """The JSON object of `limits --json`: each kind's values, None unset."""
    return {kind: asdict(limits_from_pb(getattr(reply, kind))) for kind in _LIMIT_KINDS}


def limits_table(reply: pb.GetLimitsResponse) -> str:
    """A line per limit: its option, the server's default, maximum, minimum."""
    values = [limits_from_pb(getattr(reply, kind)) for kind in _LIMIT_KINDS]
    header = ("OPTION", "DEFAULT", "MAXIMUM", "MINIMUM")
    rows = [
        (
            f"--{limit.flag}",
            *(limit.shown(getattr(kind, limit.name)) for kind in values),
        )
        for limit in LIMITS
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    return "\n".join(
        "  ".join(
            cell.ljust(size) for cell, size in zip(row, widths, strict=True)
        ).rstrip()
        for row in [header, *rows]
    )
