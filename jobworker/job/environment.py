"""The environment a job's command starts with: nothing comes from the server.

A job gets a fixed, clean environment (`PATH`, `HOME`, `LANG`) with the
variables its caller asked for set on top of it (`check_env`: names of
letters, digits and `_`, not starting with a digit; no NUL; bounded). A
caller's `PATH` replaces the job's, for the program's look-up too.
"""

from __future__ import annotations

from collections.abc import Mapping

from jobworker.errors import InvalidRequest

JOB_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Linux refuses one string of 128 KiB or more (MAX_ARG_STRLEN) and bounds
# argv and environment together; keep the environment well within that.
MAX_VARIABLE = 128 * 1024 - 1
MAX_ENV = 256 * 1024
MAX_VARIABLES = 1000
_NAME_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_NAME_CHARS = _NAME_START | frozenset("0123456789")


def job_env(work_dir: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The job's environment: the fixed one, then `extra` (checked) on top."""
    env = {"PATH": JOB_PATH, "HOME": work_dir, "LANG": "C.UTF-8"}
    env.update(check_env(extra or {}))
    return env


def check_env(extra: Mapping[str, str]) -> dict[str, str]:
    """`extra` as a dict, or `InvalidRequest` saying which variable is wrong."""
    if len(extra) > MAX_VARIABLES:
        raise InvalidRequest(
            f"too many environment variables: {len(extra)} (at most {MAX_VARIABLES})"
        )
    total = 0
    for name, value in extra.items():
        check_name(name)
        if not isinstance(value, str) or "\0" in value:
            raise InvalidRequest(f"environment variable {name}: the value has a NUL")
        size = len(name.encode()) + 1 + len(value.encode("utf-8", "surrogateescape"))
        if size > MAX_VARIABLE:
            raise InvalidRequest(
                f"environment variable {name} is longer than {MAX_VARIABLE} bytes"
            )
        total += size + 1
    if total > MAX_ENV:
        raise InvalidRequest(f"the environment is longer than {MAX_ENV} bytes")
    return dict(extra)


def check_name(name: object) -> str:
    """`name` if it is a valid variable name (`[A-Za-z_][A-Za-z0-9_]*`)."""
    if not (
        isinstance(name, str)
        and name
        and name[0] in _NAME_START
        and all(char in _NAME_CHARS for char in name)
    ):
        raise InvalidRequest(
            f"invalid environment variable name {name!r}: use letters, digits"
            " and _, not starting with a digit"
        )
    return name
