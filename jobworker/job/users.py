"""Which account a job's command runs as.

`resolve_user` turns the server's `--job-user` setting into a `JobUser`
(uid, gid, groups), or `None` when the helper should not switch users.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass

from jobworker.errors import BadUser

DEFAULT_ROOT_JOB_USER = "nobody"


@dataclass(frozen=True)
class JobUser:
    """The account a job's command runs as."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]


def resolve_user(name: str | None) -> JobUser | None:
    """The job user for the server setting `name`; `None`: do not switch.

    With no setting, a root server runs jobs as "nobody" and any other
    server runs them as itself. Raises `BadUser` for an unknown account.
    """
    if name is None:
        if os.geteuid() != 0:
            return None
        name = DEFAULT_ROOT_JOB_USER
    try:
        entry = pwd.getpwnam(name)
    except (KeyError, ValueError):
        raise BadUser(f"no such user: {name!r}") from None
    groups = os.getgrouplist(entry.pw_name, entry.pw_gid)
    return JobUser(entry.pw_name, entry.pw_uid, entry.pw_gid, tuple(groups))
