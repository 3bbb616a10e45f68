"""The soak's results and doc/reliability.md made from them."""

from __future__ import annotations

import datetime
import itertools
import os
import platform
from dataclasses import dataclass, field
from typing import Any

from soak.disconnects import Drops
from soak.disk import Disk
from soak.faults import Crash, Shutdown
from soak.flood import Flood
from soak.load import Tally
from soak.notes import NOTES, TESTS
from soak.probes import Probes, render_probes
from soak.render import render_disk, render_flood, render_restarts
from soak.restart import Restart
from soak.server import Vitals
from soak.slow import Slow
from soak.system import Leftovers


@dataclass
class Resources:
    """The server's vitals at a checkpoint against the baseline."""

    name: str
    baseline: Vitals
    after: Vitals
    problems: list[str]


@dataclass
class Run:
    """Everything one soak run measured."""

    options: dict[str, Any]
    fresh: Vitals | None = None
    baseline: Vitals | None = None
    load: Tally | None = None
    drops: list[Drops] = field(default_factory=list)
    crash: Crash | None = None
    shutdown: Shutdown | None = None
    slow: Slow | None = None
    probes: Probes | None = None
    restarts: list[Restart] = field(default_factory=list)
    flood: Flood | None = None
    disk: Disk | None = None
    follower_cap: int = 0
    resources: list[Resources] = field(default_factory=list)
    stale_job_dirs: int = 0
    stale_work_dirs: int = 0
    work_dirs_after_load: int = 0
    work_dirs_after_shutdown: int = 0
    left: Leftovers | None = None
    left_after_load: Leftovers | None = None
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def problems(self) -> list[str]:
        found = list(self.errors)
        phases: list[
            Tally | Drops | Crash | Slow | Shutdown | Restart | Flood | Disk | None
        ]
        phases = [
            self.load,
            *(self.drops if self.drops else [None]),
            self.crash,
            self.slow,
            self.shutdown,
            *(self.restarts if self.restarts else [None]),
            self.flood,
            self.disk,
        ]
        for phase in phases:
            if phase is None:
                found.append("a phase did not run")
            else:
                found += phase.lost
        if self.work_dirs_after_load:
            found.append(f"{self.work_dirs_after_load} ended jobs kept a work dir")
        if self.work_dirs_after_shutdown > self.stale_work_dirs:
            found.append("jobs stopped by the shutdown kept their work dirs")
        for checkpoint in self.resources:
            found += [f"{checkpoint.name}: {p}" for p in checkpoint.problems]
        for when, left in (("after the jobs", self.left_after_load), ("", self.left)):
            if left is not None and not left.none:
                found.append(f"left behind {when}: {left.describe()}")
        return found

    def lost_count(self) -> int:
        return len(self.problems())


def _vitals(v: Vitals | None) -> str:
    if v is None:
        return "-"
    return f"{v.threads} | {v.fds} | {v.rss_kib / 1024:.1f}"


def render(run: Run) -> str:
    o = run.options
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Reliability: soak, faults and hostile input",
        "",
        f"Written by `make soak` (`python -m soak`) on {now}, {platform.node()}",
        f"({os.cpu_count()} CPUs, Linux {platform.release()}), as root, against",
        "`twistd -n jobworker` in its own process with full isolation (cgroups v1,",
        "PID/mount/net namespaces, jobs as `nobody`), over mutual TLS on 127.0.0.1.",
        f"Code: `{o.get('revision', 'unknown')}`. Seed {o['seed']}; the whole run"
        f" took {run.seconds:.0f} s.",
        "",
        f"**Lost: {run.lost_count()}.**",
        "",
    ]
    if run.problems():
        lines += ["Problems:", ""] + [f"- {p}" for p in run.problems()] + [""]
    if run.load is not None:
        t = run.load
        rate = sum(t.tried.values()) / t.seconds if t.seconds else 0.0
        lines += [
            "## 1. Soak",
            "",
            f"{sum(t.tried.values())} jobs from {o['clients']} concurrent clients"
            f" (one certificate and connection each) in {t.seconds:.0f} s"
            f" ({rate:.1f} jobs/s), {t.output_bytes / 2**20:.1f} MiB of output"
            " followed. Each job's final Status and the output a follower got from",
            "offset 0 are checked against what the job must do.",
            "",
            "| kind | what must come of it | tried | correct | lost |",
            "|---|---|---|---|---|",
        ]
        meaning = {
            "exit": "EXITED with its own code 0-7, exact stdout and stderr",
            "binary": "EXITED 0; up to 1 MiB of random bytes whose SHA-256"
            " (printed by the job) matches what was received",
            "refused": "Start fails FAILED_PRECONDITION (missing or"
            " non-executable program)",
            "stopped": "Stop mid-run: KILLED by SIGTERM, or EXITED 0 after its"
            " TERM trap printed `bye`; stop_requested",
            "oom": "32 MiB limit, allocates 512 MiB: KILLED by 9, oom_killed",
            "escape": "leaves children in a new session and orphaned, exits:"
            " EXITED 0 (none of them may survive: see what is left below)",
            "flood": "writes 8 MiB past the server's 2 MiB output cap, then `done`"
            " on stderr: KILLED by 13 (SIGPIPE: the server closes its pipes past"
            " the cap), output_truncated, exactly the first 2 MiB kept and followed",
        }
        for kind, what in meaning.items():
            tried, ok = t.tried[kind], t.ok[kind]
            lines.append(f"| {kind} | {what} | {tried} | {ok} | {tried - ok} |")
        after = run.left_after_load
        lines += [
            "",
            "Each client then lists its jobs: exactly the ones it started,"
            " all its own. Left on the machine once they had all ended:"
            f" {after.describe() if after else '-'},"
            f" {run.work_dirs_after_load} job work directories.",
            "",
        ]
    lines += [
        "### Server resources (threads | open fds | RSS MiB, from /proc/<pid>)",
        "",
        "grpcio's ThreadPoolExecutor never shrinks, so the baseline is taken after",
        "a warm-up (`soak/warmup.py`) that drives every kind of call to its cap"
        f" at once ({run.follower_cap} followers, Stop calls from"
        f" {o['clients'] + 2} callers until",
        "each is refused, a burst of 200 List calls) and after our connections",
        "are closed. Twisted's",
        "reactor pool (job clean-up) starts up to 10 threads on demand and keeps",
        "them. Bounds: threads <= baseline + 10, fds <= baseline + 4,",
        "RSS <= baseline + 64 MiB; a leak per job or per disconnect would exceed",
        "them many times over.",
        "",
        "| checkpoint | threads | fds | RSS MiB | within bounds |",
        "|---|---|---|---|---|",
        f"| just started | {_vitals(run.fresh)} | - |".replace(" | - |", " | - |"),
        f"| baseline (after warm-up) | {_vitals(run.baseline)} | - |",
    ]
    for checkpoint in run.resources:
        verdict = "yes" if not checkpoint.problems else "; ".join(checkpoint.problems)
        lines.append(f"| {checkpoint.name} | {_vitals(checkpoint.after)} | {verdict} |")
    lines.append("")
    if run.drops:
        lines += _drops(run.drops, run.resources)
    if run.crash is not None:
        c = run.crash
        lines += [
            "## 3. Server crash (SIGKILL)",
            "",
            f"{c.jobs} running jobs, each a shell with a background child, one in a"
            " new session and an orphaned grandchild, and 5 more Start calls in"
            f" flight: {c.processes} processes below the server.",
            f"After SIGKILL of the server: {c.survivors} survived (of those, or"
            " working in the state dir or its cgroups; all gone in"
            f" {c.death_seconds:.2f} s); {c.stale_cgroups} empty job cgroups stayed,",
            f"the restarted server removed them at start-up (log says so:"
            f" {c.restart_logged}; {c.cgroups_after_restart} left) and ran a new"
            f" job correctly: {c.new_job_ok}.",
            f"Kept at restart: {run.stale_job_dirs} job directories of the first"
            " server stay in the state dir, their jobs restored from the journal"
            f" (section 6); {run.stale_work_dirs} work directories of jobs killed"
            " by the crash were left.",
            "",
        ]
    if run.slow is not None:
        lines += _slow(run.slow)
    if run.shutdown is not None:
        s = run.shutdown
        endings = ", ".join(f"{n} x {e}" for e, n in s.endings.items())
        lines += [
            "## 4. Server shutdown (SIGTERM)",
            "",
            f"{s.jobs} running jobs (half ignore SIGTERM), {s.streams} open streams,"
            f" stop grace {o['grace']:g} s.",
            f"Stream endings: {endings}. Start calls in flight at SIGTERM: "
            + ", ".join(f"{n} x {code}" for code, n in s.starts.items())
            + " (a started one is stopped with the rest).",
            f"The server exited with status {s.exit_code} after {s.seconds:.2f} s"
            f" (bound: grace + 5 s); {s.survivors} job processes survived; left"
            f" behind: {s.left.describe() if s.left else '-'}; work directories"
            f" of its jobs left: {run.work_dirs_after_shutdown - run.stale_work_dirs}.",
            "",
        ]
    if run.restarts:
        lines += render_restarts(run.restarts, o["restart_jobs"])
    if run.flood is not None:
        lines += render_flood(run.flood)
    if run.disk is not None:
        lines += render_disk(run.disk)
    lines += _fast_parts(run)
    return "\n".join(lines)


def _drops(rounds: list[Drops], checkpoints: list[Resources]) -> list[str]:
    total = sum(sum(d.tried.values()) for d in rounds)
    lines = [
        "## 2. Disconnects",
        "",
        f"{len(rounds)} rounds, {total} followers in all, of 4 always-writing jobs"
        " per round, dropped after a random number of chunks (0-29), 12 at a"
        " time, by a gRPC cancel, a TCP reset (a relay closes its socket to the"
        " server with SO_LINGER 0) or SIGKILL of the follower's process.",
        "",
        "| round | cancel | reset | kill | threads before/peak/after"
        " | slowest drop (s) | lost |",
        "|---|---|---|---|---|---|---|",
    ]
    for number, d in enumerate(rounds, 1):
        slowest = max(d.slowest.values(), default=0.0)
        lines.append(
            f"| {number} | {d.tried['cancel']} | {d.tried['reset']}"
            f" | {d.tried['kill']} | {d.threads_before}/{d.threads_peak}"
            f"/{d.threads_after} | {slowest:.1f} | {len(d.lost)} |"
        )
    return [
        *lines,
        "",
        "After each round 64 new followers (the server's cap) were all served, so",
        "no follower slot leaked, and the round's jobs were still running with no",
        "gap in their output.",
        "",
        *_rss_trend(checkpoints),
    ]


def _slow(s: Slow) -> list[str]:
    mib = 1024.0
    return [
        "## 3b. Followers that stop reading",
        "",
        f"On the restarted server (output cap raised to {s.size >> 20} MiB), a job"
        f" wrote {s.size >> 20} MiB; {s.stalled} followers read one chunk each,"
        " then nothing for 10 s; then one follower read it all back. Twice:"
        " the first round on the fresh server also pays for what its threads"
        " and connections keep once they have carried large messages"
        f" ({s.first_before_kib / mib:.1f} MiB before, {s.first_peak_kib / mib:.1f}"
        " MiB at the peak; bound: +64 MiB). Second round:"
        f" {s.rss_before_kib / mib:.1f} MiB before, {s.rss_peak_kib / mib:.1f} MiB"
        " at the peak (bound: +32 MiB): grpc flow control holds the stalled",
        "followers back, nothing queues their output in memory. The follower"
        f" read all {s.read_back >> 20} MiB back in {s.read_seconds:.1f} s."
        f" Lost: {len(s.lost)}.",
        "",
    ]


def _rss_trend(checkpoints: list[Resources]) -> list[str]:
    """How much the RSS grew in each round after the first one."""
    rss = [
        c.after.rss_kib / 1024
        for c in checkpoints
        if c.name.startswith("after disconnect round")
    ]
    if len(rss) < 2:
        return []
    growth = ", ".join(f"{b - a:+.1f}" for a, b in itertools.pairwise(rss))
    return [f"RSS change (MiB) from each round to the next: {growth}.", ""]


def _fast_parts(run: Run) -> list[str]:
    left = run.left.describe() if run.left else "-"
    return [
        "## Left on the machine after the run",
        "",
        f"{left} (job cgroup parents searched by name in all of /sys/fs/cgroup;",
        "processes by working directory and cgroup; lasting zombies among our",
        "children or named jobworker-*; mounts below the state dir).",
        "",
        *NOTES,
        *(render_probes(run.probes) if run.probes else []),
        *TESTS,
    ]


def write(path: str, run: Run) -> None:
    with open(path, "w") as report:
        report.write(render(run))
