"""Protobuf messages to and from the library's plain values."""

from __future__ import annotations

import functools
from dataclasses import fields
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from jobworker.errors import InvalidRequest
from jobworker.job.outputlog import Run
from jobworker.limits import limits_to_pb
from jobworker.model import JobState, JobStatus, Usage
from jobworker.untrusted import shown
from jobworker.v1 import jobworker_pb2 as pb

M = TypeVar("M", bound=Message)
# A job id is a UUID's text (`jobworker.job.manager`): anything longer is no
# id (nor a prefix of one), and is refused without being echoed.
JOB_ID_CHARS = 36

_STATES = {
    JobState.RUNNING: pb.JOB_STATE_RUNNING,
    JobState.STOPPING: pb.JOB_STATE_STOPPING,
    JobState.EXITED: pb.JOB_STATE_EXITED,
    JobState.KILLED: pb.JOB_STATE_KILLED,
    JobState.LOST: pb.JOB_STATE_LOST,
}
STATES_FROM_PB = {value: state for state, value in _STATES.items()}
# Status replies kept, the most recently used, of commands up to
# SHARED_COMMAND_BYTES (see `status_reply`).
STATUS_REPLIES = 1024
SHARED_COMMAND_BYTES = 4096
# Read one by one: `dataclasses.asdict` deep-copies, at several times the cost.
_USAGE_FIELDS = tuple(field.name for field in fields(Usage))


def parse(message_type: type[M], data: bytes) -> M:
    """Decode a request; malformed bytes are the client's fault."""
    message = message_type()
    try:
        message.ParseFromString(data)
    except (DecodeError, RuntimeWarning) as error:
        raise InvalidRequest(
            f"malformed {message_type.DESCRIPTOR.name}: {shown(str(error))}"
        ) from None
    return message


def check_job_id(job_id: str) -> str:
    """`job_id` if it can be an id; `InvalidRequest`, not echoing it, if not."""
    if len(job_id) > JOB_ID_CHARS:
        raise InvalidRequest(
            f"a job id has at most {JOB_ID_CHARS} characters; this one has"
            f" {len(job_id)}"
        )
    return job_id


def start_command(request: pb.StartRequest) -> list[bytes]:
    """The argv of a Start: `command`, or `command_text` encoded as UTF-8."""
    if request.command and request.command_text:
        raise InvalidRequest("give the command as command or command_text, not both")
    if request.command_text:
        return [arg.encode("utf-8") for arg in request.command_text]
    return list(request.command)


def status_to_pb(status: JobStatus) -> pb.JobStatus:
    """A job's status as the API shows it."""
    message = pb.JobStatus(
        id=status.id,
        owner=status.owner,
        command=list(status.command),
        state=_STATES[status.state],
        oom_killed=status.oom_killed,
        stop_requested=status.stop_requested,
        limits=limits_to_pb(status.limits),
        output_bytes=status.output_bytes,
        output_truncated=status.output_truncated,
        output_truncated_by=status.output_truncated_by,
        request_id=status.request_id or "",
    )
    message.started_at.FromNanoseconds(round(status.started_at * 1e9))
    if status.ended_at is not None:
        message.ended_at.FromNanoseconds(round(status.ended_at * 1e9))
    if status.exit_code is not None:
        message.exit_code = status.exit_code
    if status.signal is not None:
        message.signal = status.signal
    usage, shown_usage = status.usage, message.usage
    for name in _USAGE_FIELDS:
        value = getattr(usage, name)
        if value is not None:
            setattr(shown_usage, name, value)
    return message


def status_reply(status: JobStatus) -> pb.StatusResponse:
    """The Status reply showing `status`: made once, shared; never modify it.

    A published status is immutable and an ended job's is final, so every
    Status call of it until the job changes gets one message (grpc only
    serializes it) instead of building it again. Replies of long commands
    are built every time, so the replies kept stay within a few MiB.
    """
    if sum(len(arg) for arg in status.command) > SHARED_COMMAND_BYTES:
        return pb.StatusResponse(job=status_to_pb(status))
    return _shared_reply(status)


@functools.lru_cache(maxsize=STATUS_REPLIES)
def _shared_reply(status: JobStatus) -> pb.StatusResponse:
    return pb.StatusResponse(job=status_to_pb(status))


def encode_chunk(run: Run) -> bytes:
    """A run of the output log as an encoded `OutputChunk` message.

    Written by hand (the protobuf wire format of its five fields) so that
    the data is copied once, from the log read into the message; building
    a `pb.OutputChunk` and serializing it copies it twice more, for every
    follower of every chunk. Byte for byte what `SerializeToString` gives
    (a test holds it to that, so a change of the message shows up).
    """
    size = sum(len(piece) for piece in run.pieces)
    head = bytearray(b"\x08")  # field 1, varint: stream
    _varint(head, run.stream)
    if run.offset:
        head.append(0x10)  # field 2, varint: offset
        _varint(head, run.offset)
    if run.next_offset:
        head.append(0x18)  # field 3, varint: next_offset
        _varint(head, run.next_offset)
    if size:
        head.append(0x22)  # field 4, length-delimited: data
        _varint(head, size)
    if run.time_ns is None:
        return b"".join([head, *run.pieces])
    seconds, nanos = divmod(run.time_ns, 1_000_000_000)
    time = bytearray()
    if seconds:
        time.append(0x08)  # Timestamp field 1, varint: seconds
        _varint(time, seconds)
    if nanos:
        time.append(0x10)  # Timestamp field 2, varint: nanos
        _varint(time, nanos)
    tail = bytearray(b"\x2a")  # field 5, length-delimited: time
    _varint(tail, len(time))
    return b"".join([head, *run.pieces, tail, time])


def _varint(out: bytearray, value: int) -> None:
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
