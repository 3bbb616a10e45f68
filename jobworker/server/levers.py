"""The operator's levers against one user starving the others or the host.

One table (`PARAMETERS`, usage.Options' `optParameters`) of the server's
per-user caps (running jobs, followers, output, retention of ended jobs)
and host totals, each with its parser; `twistd jobworker
--help` shows them from here. `cgroup_limits` turns them into the limits
of the users' cgroups and of their parent, the host's figures where a
total is not given (90 % of its memory, half of pid_max, all CPUs), and
`job_ceiling` keeps every job's maximum within its user's limit. See doc/security.md
("Denial of service") and doc/isolation.md ("Limits").
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.python import usage

from jobworker.defaults import RETAIN, RETAIN_JOBS
from jobworker.job.admission import MAX_JOBS_PER_OWNER
from jobworker.job.storage import MIN_FREE_DISK, USER_OUTPUT_QUOTA
from jobworker.model import Limits
from jobworker.units import (
    InvalidDuration,
    InvalidSize,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
)

_UNLIMITED = ("unlimited", "none")
# What keeps ended jobs for ever (no age cap, no count cap).
_FOREVER = ("forever", *_UNLIMITED)
# The share of the host's memory all jobs together may use by default.
TOTAL_MEMORY_SHARE = 0.9
# The fields the users' cgroups and their parent limit (IO is per job).
SHARED = ("cpu", "memory_bytes", "pids")


def _count(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.isdigit() or not low <= int(text) <= high:
            raise usage.UsageError(f"{text!r} is not a whole number {low}..{high}")
        return int(text)

    parse.coerceDoc = f"{low}..{high}."  # type: ignore[attr-defined]
    return parse


def _option(
    name: str, default: Any, help: str, parse: Callable[[str], Any]
) -> list[Any]:
    """One row of `PARAMETERS`: a parse error names the option."""

    def coerce(text: str) -> Any:
        try:
            return parse(text)
        except usage.UsageError as error:
            raise usage.UsageError(f"--{name}: {error}") from None

    coerce.coerceDoc = getattr(parse, "coerceDoc", "")  # type: ignore[attr-defined]
    return [name, None, default, help, coerce]


def _or_unlimited(
    parse: Callable[[str], Any], words: tuple[str, ...] = _UNLIMITED
) -> Callable[[str], Any]:
    """`parse`, or None (no cap) for one of `words`."""

    def parse_limit(text: str) -> Any:
        if text.strip().lower() in words:
            return None
        return parse(text)

    return parse_limit


def _size(text: str) -> int:
    size = _bytes(text)
    if size < 1 << 20:
        raise usage.UsageError(f"{text!r} is below 1M")
    return size


class _Size(int):
    """A size default that the help shows as a size (10G, not 10737418240)."""

    def __str__(self) -> str:
        return format_size(self)


def _bytes(text: str) -> int:
    try:
        return parse_size(text)
    except InvalidSize as error:
        raise usage.UsageError(str(error)) from None


class _Duration(float):
    """A duration default that the help shows as one (7d, not 604800.0)."""

    def __str__(self) -> str:
        return format_duration(self)


def _age(text: str) -> float:
    try:
        seconds = 0.0 if text.strip() == "0" else parse_duration(text)
    except InvalidDuration as error:
        raise usage.UsageError(str(error)) from None
    if seconds < 1:
        raise usage.UsageError(
            f"{text!r} is below 1s: a job would be gone before its owner could"
            " read how it ended ('forever' keeps jobs)"
        )
    return seconds


def _cpus(text: str) -> float:
    try:
        cpus = float(text)
    except ValueError:
        cpus = -1.0
    if not 0.01 <= cpus <= 4096:
        raise usage.UsageError(f"{text!r} is not a number of CPUs 0.01..4096")
    return cpus


_pids = _count(1, 1 << 22)


# As usage.Options' optParameters: name, short, default, help, parser.
PARAMETERS: list[list[Any]] = [
    _option(
        "max-jobs-per-user",
        MAX_JOBS_PER_OWNER,
        "Jobs one user may have running at once.",
        _count(1, 1_000_000),
    ),
    _option(
        "max-followers-per-user",
        None,
        "Output streams one user may have open [default: half of --max-followers].",
        _count(1, 10_000),
    ),
    _option(
        "user-output-quota",
        _Size(USER_OUTPUT_QUOTA),
        "Output one user's jobs may hold together: Start is refused once it"
        " is used up, and a running job reaching it is truncated.",
        _or_unlimited(_bytes),
    ),
    _option(
        "min-free-disk",
        _Size(MIN_FREE_DISK),
        "Free space the state directory's disk keeps: below it Start is"
        " refused and running jobs' output is truncated.",
        _bytes,
    ),
    _option(
        "retain",
        _Duration(RETAIN),
        "How long an ended job and its output are kept after it ended, e.g."
        " 12h, 7d; 'forever': no age limit.",
        _or_unlimited(_age, _FOREVER),
    ),
    _option(
        "retain-jobs",
        RETAIN_JOBS,
        "Ended jobs kept per user, the newest; older ones are removed"
        " ('forever': no count limit).",
        _or_unlimited(_count(1, 100_000_000), _FOREVER),
    ),
    _option(
        "user-memory",
        None,
        "Memory of one user's jobs together [default: unlimited within"
        " --total-memory].",
        _or_unlimited(_size),
    ),
    _option(
        "user-pids",
        None,
        "Processes and threads of one user's jobs together [default:"
        " unlimited within --total-pids].",
        _or_unlimited(_pids),
    ),
    _option(
        "user-cpu",
        None,
        "CPUs one user's jobs together may use [default: unlimited within"
        " --total-cpu].",
        _or_unlimited(_cpus),
    ),
    _option(
        "total-memory",
        None,
        "Memory of all jobs together [default: 90% of the host's memory].",
        _size,
    ),
    _option(
        "total-pids",
        None,
        "Processes and threads of all jobs together [default: half of the"
        " kernel's pid_max].",
        _pids,
    ),
    _option(
        "total-cpu",
        None,
        "CPUs all jobs together may use [default: all CPUs].",
        _cpus,
    ),
]


def host_memory(meminfo: str = "/proc/meminfo") -> int:
    """The host's memory in bytes (MemTotal)."""
    with open(meminfo) as info:
        for line in info:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no MemTotal in {meminfo}")


def pid_max(path: str = "/proc/sys/kernel/pid_max") -> int:
    """The kernel's highest pid: the host's limit on tasks."""
    with open(path) as value:
        return int(value.read())


def cgroup_limits(config: dict[str, Any]) -> tuple[Limits, Limits]:
    """The limits of all jobs together and of one user's jobs together.

    A total not given is the host's figure; a user's limit above the total
    is a `UsageError` (the kernel would hold the user to the total anyway,
    and the operator meant something else).
    """
    total = Limits(
        cpu=config["total-cpu"] or float(len(os.sched_getaffinity(0))),
        memory_bytes=config["total-memory"] or int(host_memory() * TOTAL_MEMORY_SHARE),
        pids=config["total-pids"] or pid_max() // 2,
    )
    user = Limits(
        cpu=config["user-cpu"],
        memory_bytes=config["user-memory"],
        pids=config["user-pids"],
    )
    for name in SHARED:
        mine, all_ = getattr(user, name), getattr(total, name)
        if mine is not None and mine > all_:
            flag = name.removesuffix("_bytes")
            shown = format_size(mine) if flag == "memory" else f"{mine:g}"
            whole = format_size(all_) if flag == "memory" else f"{all_:g}"
            raise usage.UsageError(
                f"--user-{flag} {shown} is above --total-{flag} {whole}"
            )
    return total, user


def job_ceiling(maximums: dict[str, Any], user: Limits) -> dict[str, Any]:
    """The per-job maximums, none above the user's limit.

    A job's own limit can never exceed its user's: the most a job may ask
    for is lowered to the user's limit, so a status never shows a limit the
    kernel would not keep. (Where users are not limited, the total holds
    every job in the kernel, and a maximum may stay "unlimited".)
    """
    lowered = dict(maximums)
    for name in SHARED:
        ceiling, maximum = getattr(user, name), lowered[name]
        if ceiling is not None and (maximum is None or maximum > ceiling):
            lowered[name] = ceiling
    return lowered
