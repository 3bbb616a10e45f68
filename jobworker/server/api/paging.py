"""List pages (AIP-158): page sizes, opaque page tokens, a byte budget.

Jobs are ordered by (started_at, id). A page token encodes the key of the
last job of the previous page (version byte, big-endian double, id; then
base64url without padding), so paging survives jobs started meanwhile: a
page goes on after that key whatever was added. The token only says where
to resume; visibility is applied to the jobs before paging, so a token
never shows a caller a job it may not see.

`list_filter` applies the request's `states` and `owner` filters, like
visibility, before paging.

A page ends after `size` jobs, or before the job that would take its
encoded size past `PAGE_BYTES` (a page always holds at least one job), so a
reply stays far below grpc's default 4 MiB receive limit even when every
command is the largest the server takes (1 MiB).
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from jobworker.errors import InvalidRequest
from jobworker.model import JobStatus
from jobworker.server.api.convert import STATES_FROM_PB, status_to_pb
from jobworker.v1 import jobworker_pb2 as pb

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
PAGE_BYTES = 1 << 20
_VERSION = 1
_HEADER = struct.Struct(">Bd")
_MAX_ID = 128
_MAX_TOKEN = 4 * (_HEADER.size + _MAX_ID) // 3 + 4

Key = tuple[float, str]


def job_key(job: JobStatus) -> Key:
    """Where a job sorts in List: oldest first, ties by id."""
    return (job.started_at, job.id)


def encode_token(key: Key) -> str:
    """The opaque page token that resumes after `key`."""
    started_at, job_id = key
    raw = _HEADER.pack(_VERSION, started_at) + job_id.encode("ascii")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_token(token: str) -> Key:
    """The key a token resumes after; `InvalidRequest` if it is not ours."""
    malformed = InvalidRequest("malformed page_token: pass a next_page_token back")
    if len(token) > _MAX_TOKEN:
        raise malformed
    try:
        text = token.encode("ascii")
        raw = base64.b64decode(
            text + b"=" * (-len(text) % 4), altchars=b"-_", validate=True
        )
        version, started_at = _HEADER.unpack_from(raw)
        job_id = raw[_HEADER.size :].decode("ascii")
    except (UnicodeError, binascii.Error, struct.error):
        raise malformed from None
    key = (started_at, job_id)
    if version != _VERSION or not math.isfinite(started_at) or not job_id:
        raise malformed
    if encode_token(key) != token:  # one spelling per key: no padding, "-_"
        raise malformed
    return key


def list_filter(request: pb.ListRequest) -> Callable[[JobStatus], bool]:
    """Whether a job passes the request's `states` and `owner` filters."""
    states = set()
    for value in request.states:
        if value not in STATES_FROM_PB:
            raise InvalidRequest(f"states: unknown job state {value}")
        states.add(STATES_FROM_PB[value])
    owner = request.owner

    def wanted(job: JobStatus) -> bool:
        return (not states or job.state in states) and (not owner or job.owner == owner)

    return wanted


def _entry_size(message: pb.JobStatus) -> int:
    """Bytes a job adds to a ListResponse: tag, length varint, message."""
    size = message.ByteSize()
    return 1 + max(1, -(-size.bit_length() // 7)) + size


@dataclass(frozen=True)
class PageRequest:
    """A checked ListRequest: how many jobs at most, and after which key."""

    size: int
    after: Key | None

    @classmethod
    def from_pb(cls, request: pb.ListRequest) -> PageRequest:
        """Check the paging fields; `InvalidRequest` for a bad one."""
        if request.page_size < 0:
            raise InvalidRequest(
                f"page_size must not be negative, got {request.page_size}"
            )
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = decode_token(request.page_token) if request.page_token else None
        return cls(size=size, after=after)

    def page(self, jobs: Iterable[JobStatus]) -> pb.ListResponse:
        """This page of `jobs` (already only those the caller may see)."""
        after = self.after
        rest = sorted(
            (job for job in jobs if after is None or job_key(job) > after),
            key=job_key,
        )
        taken: list[pb.JobStatus] = []
        used = 0
        for job in rest:
            if len(taken) == self.size:
                break
            message = status_to_pb(job)
            size = _entry_size(message)
            if taken and used + size > PAGE_BYTES:
                break
            taken.append(message)
            used += size
        response = pb.ListResponse(jobs=taken)
        if len(taken) < len(rest):
            response.next_page_token = encode_token(job_key(rest[len(taken) - 1]))
        return response
