"""The sandbox the server builds by default, for tests that start real jobs."""

from __future__ import annotations

import functools

from jobworker.isolation.sandbox import Sandbox, make_sandbox


@functools.cache
def default_sandbox() -> Sandbox:
    """What `twistd jobworker` uses."""
    return make_sandbox()
