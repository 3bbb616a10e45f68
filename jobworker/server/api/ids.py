"""Job ids as callers type them: the whole id, or a unique prefix of it.

A prefix of at least `MIN_PREFIX` characters names the one job, among
those the caller may see, whose id starts with it: a user's own jobs, every
job for an admin. Nothing is learnt of other users' jobs: a prefix that
matches only theirs is "not found", word for word like an id that matches
nothing, and their jobs never make a prefix ambiguous.
"""

from __future__ import annotations

from jobworker.errors import InvalidRequest, JobNotFound
from jobworker.job.board import StatusBoard
from jobworker.model import JobStatus
from jobworker.server.api.auth import Caller
from jobworker.untrusted import shown

MIN_PREFIX = 4
# An ambiguous prefix's error names at most this many of its matches.
SHOWN_MATCHES = 10


class AmbiguousJobId(InvalidRequest):
    """A prefix that names more than one of the caller's jobs."""


def resolve(board: StatusBoard, caller: Caller, job_id: str) -> JobStatus:
    """The status of the job `job_id` names for `caller`.

    Raises `JobNotFound`, or `AmbiguousJobId` listing the matches.
    """
    try:
        status = board.get(job_id)
    except JobNotFound:
        pass
    else:
        if caller.may_see(status):
            return status
        raise JobNotFound(job_id)
    if len(job_id) < MIN_PREFIX:
        raise JobNotFound(job_id)
    matches = [
        job for job in board.all() if job.id.startswith(job_id) and caller.may_see(job)
    ]
    if not matches:
        raise JobNotFound(job_id)
    if len(matches) > 1:
        listed = ", ".join(job.id for job in matches[:SHOWN_MATCHES])
        more = len(matches) - SHOWN_MATCHES
        if more > 0:
            listed += f" and {more} more"
        raise AmbiguousJobId(
            f"job id prefix '{shown(job_id)}' matches {len(matches)} jobs: {listed};"
            " give more of the id"
        )
    return matches[0]
