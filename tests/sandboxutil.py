"""The sandbox the server builds by default, for tests that start real jobs."""

from __future__ import annotations

import functools

from jobworker.isolation.sandbox import Sandbox, make_sandbox
from jobworker.isolation.uids import DEFAULT_RANGE


@functools.cache
def _layout_and_filter() -> Sandbox:
    return make_sandbox()


def default_sandbox(*, uid_per_job: bool = True, seccomp: bool = True) -> Sandbox:
    """What `twistd jobworker` uses: a new uid pool for each call."""
    shared = _layout_and_filter()
    uids = DEFAULT_RANGE if uid_per_job else None
    fresh = make_sandbox(seccomp=False, uid_range=uids)
    return Sandbox(shared.layout, shared.seccomp if seccomp else None, fresh.uids)
