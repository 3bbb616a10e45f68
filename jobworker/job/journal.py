"""The journal: every job's record, kept crash-safe in its job directory.

A job's record is `<state>/jobs/<id>/job.json`, one JSON object written
whole: to `job.json.tmp`, fsync'd, renamed over `job.json`, and the job's
directory fsync'd (the jobs directory too, on the first write). A crash
leaves the old record or the new one, never a mix of the two. `save` writes
only when what the record says changes (start, stop request, truncation,
end); a running job's output growth is not journaled, the output log says
it. `load` reads every record back: one that cannot be read or does not
make sense is logged and skipped, never raised; a leftover temporary file
is removed. `remove` forgets a job's record (for retention). Why one file
per job rather than one append-only journal: doc/jobs.md, "The journal".
"""

from __future__ import annotations

import json
import os
from contextlib import suppress
from dataclasses import dataclass, field, fields, replace
from typing import Any

from twisted.logger import Logger

from jobworker.model import JobState, JobStatus, Limits, Usage

RECORD = "job.json"
TEMP = "job.json.tmp"
FORMAT = 1
# An argv of 1 MiB, every byte escaped as \udcXX, and room for the rest.
MAX_RECORD_BYTES = 8 * 1024 * 1024
_log = Logger()


@dataclass(frozen=True)
class Entry:
    """One journaled job: its status and the size of its output log."""

    status: JobStatus
    log_size: int


@dataclass
class Loaded:
    """What `load` found: the records, and job directories without one."""

    entries: list[Entry] = field(default_factory=list)
    unrecorded: list[str] = field(default_factory=list)
    """Ids of job directories that hold no record (nor a damaged one)."""


class Journal:
    """The records of the jobs below `<state_dir>/jobs`; reactor thread only."""

    def __init__(self, state_dir: str) -> None:
        self.jobs_dir = os.path.join(os.path.abspath(state_dir), "jobs")
        self._saved: dict[str, JobStatus] = {}

    def save(self, status: JobStatus, log_size: int) -> None:
        """Make `status` the job's record, durably, if it says something new.

        A failure to write (a full disk) is logged; the job goes on.
        """
        said = _what_matters(status)
        if self._saved.get(status.id) == said:
            return
        first = status.id not in self._saved
        try:
            self._write(status.id, encode(Entry(status, log_size)), first)
        except OSError as error:
            _log.error(
                "job {job_id}: cannot write its journal record: {error}",
                job_id=status.id,
                error=error,
            )
            return
        self._saved[status.id] = said

    def remove(self, job_id: str) -> None:
        """Forget a job: its record is removed, so no later load finds it.

        The rest of its directory (its output log) is the caller's to remove.
        """
        self._saved.pop(job_id, None)
        job_dir = os.path.join(self.jobs_dir, job_id)
        for name in (TEMP, RECORD):
            with suppress(FileNotFoundError):
                os.unlink(os.path.join(job_dir, name))
        if os.path.isdir(job_dir):
            _fsync_dir(job_dir)

    def load(self) -> Loaded:
        """Every job's record, oldest first; damaged ones logged and skipped."""
        loaded = Loaded()
        try:
            names = os.listdir(self.jobs_dir)
        except FileNotFoundError:
            return loaded
        for name in names:
            job_dir = os.path.join(self.jobs_dir, name)
            if not os.path.isdir(job_dir) or os.path.islink(job_dir):
                continue
            entry = self._read(name, job_dir, loaded)
            if entry is not None:
                loaded.entries.append(entry)
                self._saved[name] = _what_matters(entry.status)
        loaded.entries.sort(key=lambda entry: entry.status.started_at)
        return loaded

    def _read(self, name: str, job_dir: str, loaded: Loaded) -> Entry | None:
        with suppress(FileNotFoundError):  # a write cut off by a crash
            os.unlink(os.path.join(job_dir, TEMP))
        path = os.path.join(job_dir, RECORD)
        try:
            with open(path, "rb") as record:
                data = record.read(MAX_RECORD_BYTES + 1)
        except FileNotFoundError:
            loaded.unrecorded.append(name)
            return None
        except OSError as error:
            _skipped(path, str(error))
            return None
        try:
            entry = decode(data)
        except ValueError as error:
            _skipped(path, str(error))
            return None
        if entry.status.id != name:
            _skipped(path, f"it is the record of job {entry.status.id!r}")
            return None
        return entry

    def _write(self, job_id: str, data: bytes, first: bool) -> None:
        job_dir = os.path.join(self.jobs_dir, job_id)
        temp = os.path.join(job_dir, TEMP)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(temp, flags, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, os.path.join(job_dir, RECORD))
        _fsync_dir(job_dir)
        if first:
            _fsync_dir(self.jobs_dir)


def _what_matters(status: JobStatus) -> JobStatus:
    """The status as far as the journal cares: a running job's output size not."""
    return status if status.state.ended else replace(status, output_bytes=0)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _skipped(path: str, why: str) -> None:
    _log.warn("journal record {path} skipped: {why}", path=path, why=why)


def encode(entry: Entry) -> bytes:
    """A record as JSON text: ASCII, argv bytes as UTF-8 with surrogateescape."""
    status = entry.status
    value = {
        "format": FORMAT,
        "id": status.id,
        "owner": status.owner,
        "command": [arg.decode("utf-8", "surrogateescape") for arg in status.command],
        "request_id": status.request_id,
        "limits": {f.name: getattr(status.limits, f.name) for f in fields(Limits)},
        "state": status.state.value,
        "started_at": status.started_at,
        "ended_at": status.ended_at,
        "exit_code": status.exit_code,
        "signal": status.signal,
        "oom_killed": status.oom_killed,
        "stop_requested": status.stop_requested,
        "output_bytes": status.output_bytes,
        "output_truncated": status.output_truncated,
        "output_truncated_by": status.output_truncated_by,
        "usage": {f.name: getattr(status.usage, f.name) for f in fields(Usage)},
        "log_size": entry.log_size,
    }
    return json.dumps(value, ensure_ascii=True, allow_nan=False).encode("ascii")


def decode(data: bytes) -> Entry:
    """The record in `data`; `ValueError` saying what is wrong with it."""
    if len(data) > MAX_RECORD_BYTES:
        raise ValueError(f"longer than {MAX_RECORD_BYTES} bytes")
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"not JSON ({error})") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")  # noqa: TRY004 - bad data, not a bug
    get = _Fields(value)
    if get.of("format", int) != FORMAT:
        raise ValueError(f"format {value.get('format')!r}, not {FORMAT}")
    command = get.of("command", list)
    if not command or not all(isinstance(arg, str) for arg in command):
        raise ValueError("'command' is not a list of strings")
    limits = _Fields(get.of("limits", dict))
    usage = _Fields(get.of("usage", dict))
    try:
        state = JobState(get.of("state", str))
        status = JobStatus(
            id=get.of("id", str),
            owner=get.of("owner", str),
            command=tuple(arg.encode("utf-8", "surrogateescape") for arg in command),
            state=state,
            limits=Limits(**_numbers(limits, Limits, floats={"cpu"})),
            started_at=get.of("started_at", float),
            ended_at=get.optional("ended_at", float),
            exit_code=get.optional("exit_code", int),
            signal=get.optional("signal", int),
            oom_killed=get.of("oom_killed", bool),
            stop_requested=get.of("stop_requested", bool),
            output_bytes=get.of("output_bytes", int),
            output_truncated=get.of("output_truncated", bool),
            # Not in the records of servers before it was journaled.
            output_truncated_by=get.optional("output_truncated_by", str) or "",
            usage=Usage(**_numbers(usage, Usage, floats={"cpu_seconds"})),
            request_id=get.optional("request_id", str),
        )
    except UnicodeEncodeError as error:
        raise ValueError(f"'command' is not encodable ({error})") from None
    log_size = get.of("log_size", int)
    if log_size < 0 or status.output_bytes < 0:
        raise ValueError("a negative size")
    return Entry(status, log_size)


def _numbers(
    value: _Fields, kind: type[Limits] | type[Usage], floats: set[str]
) -> dict[str, Any]:
    """The fields of a `Limits` or `Usage` object: each a number or None."""
    return {
        f.name: value.optional(f.name, float if f.name in floats else int)
        for f in fields(kind)
    }


class _Fields:
    """Typed access to a decoded JSON object's fields; `ValueError` if wrong."""

    def __init__(self, value: dict[str, Any]) -> None:
        self._value = value

    def of(self, name: str, kind: type[Any]) -> Any:
        if name not in self._value:
            raise ValueError(f"no {name!r}")
        found = self._value[name]
        if kind is float and isinstance(found, int) and not isinstance(found, bool):
            return float(found)
        # bool is an int in Python, but not in a record.
        if not isinstance(found, kind) or (kind is int and isinstance(found, bool)):
            raise ValueError(f"{name!r} is not a {kind.__name__}: {found!r}")
        return found

    def optional(self, name: str, kind: type[Any]) -> Any:
        return None if self._value.get(name) is None else self.of(name, kind)
