"""Defaults, bounds and timeouts of the server and the CLI, in one place.

The server's options (`jobworker.server.tap`) and the CLI's show these in
their help; the library takes them as its parameters' defaults; the API
(`jobworker.server.api.servicer`) bounds its waits with the call timeouts.
"""

from __future__ import annotations

import os
from dataclasses import replace

from jobworker.model import Limits

# Where the server listens (`--listen`) and where the CLI looks for it (`--server`).
LISTEN = "127.0.0.1:7443"
STATE_DIR = "/var/lib/jobworker"
# Output kept per job; the rest is dropped (`--output-cap`).
OUTPUT_CAP = 1 << 30
# Input a job's stdin takes (`start -i`); more is refused.
INPUT_CAP = 1 << 30
# Seconds between SIGTERM and SIGKILL when a stop names none (`--stop-grace`),
# and the most a stop may name.
STOP_GRACE = 10.0
MAX_GRACE = 24 * 3600.0
# Output streams served at once (`--max-followers`), and the most allowed.
MAX_FOLLOWERS = 64
MAX_FOLLOWERS_CEILING = 10_000
# Ended jobs are removed this long after they ended (`--retain`), and beyond
# the newest this many ended jobs of each owner (`--retain-jobs`).
RETAIN = 7 * 86400.0
RETAIN_JOBS = 1000
# How long a Remove call waits for the job's journal record and directory
# to be gone (the directory is removed in the reactor's thread pool).
REMOVE_CALL_TIMEOUT = 60.0
# How long the CLI tries to connect (`--connect-timeout`).
CONNECT_TIMEOUT = 10.0

# A job's helper that has not exec'd the command this long after its spawn
# is killed and the start fails: set-up can hang (a hung NFS working
# directory, a stuck cgroup write).
EXEC_TIMEOUT = 30.0
# How long a Start call waits for the job's exec: longer than EXEC_TIMEOUT,
# so a slow start ends with the library's error, not the call's.
START_CALL_TIMEOUT = 120.0
# How long a StreamOutput call waits for the reactor to name the output log.
QUERY_TIMEOUT = 30.0
# A Stop call waits for the grace period it names (at most MAX_GRACE), or
# STOP_DEFAULT_BOUND when it names none, plus STOP_MARGIN.
STOP_MARGIN = 60.0
STOP_DEFAULT_BOUND = 600.0

# The lowest IO limit a job may have (`--min-io-bps`): below it a throttled
# job's writes sit in D state past SIGKILL and stall the host's sync.
MIN_IO_BPS = 1 << 20

# What a job gets when it asks for nothing. IO is unlimited: which device to
# throttle, and how much, depends on the machine.
DEFAULT_LIMITS = Limits(cpu=1.0, memory_bytes=512 << 20, pids=1024)
# The most a job may ask for; the CPU maximum is all CPUs (`max_limits`).
# A job needs far fewer tasks than the host's pid_max (32768 here); the
# users' and the total pids limits (jobworker.server.levers) bound all jobs.
_MAX_LIMITS = Limits(memory_bytes=4 << 30, pids=4096)
# How the options' help shows that maximum.
MAX_CPU_TEXT = "all CPUs"


def max_limits() -> Limits:
    """The most a job may ask for unless the server is told otherwise."""
    return replace(_MAX_LIMITS, cpu=float(len(os.sched_getaffinity(0))))
