"""The sandbox the server builds by default, for tests that start real jobs."""

from __future__ import annotations

import functools

from jobworker.isolation.rootfs import HostLayout, host_layout
from jobworker.isolation.sandbox import Sandbox, make_sandbox
from jobworker.isolation.uids import DEFAULT_RANGE


@functools.cache
def _layout() -> HostLayout:
    return host_layout()


def default_sandbox(*, uid_per_job: bool = True) -> Sandbox:
    """What `twistd jobworker` uses: a new uid pool for each call."""
    fresh = make_sandbox(uid_range=DEFAULT_RANGE if uid_per_job else None)
    return Sandbox(_layout(), fresh.uids)
