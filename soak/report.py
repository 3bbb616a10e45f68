"""The soak's results and doc/reliability.md made from them."""

from __future__ import annotations

import datetime
import os
import platform
from dataclasses import dataclass, field
from typing import Any

from soak.disconnects import Drops
from soak.faults import Crash, Shutdown
from soak.load import Tally
from soak.server import Vitals
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
    drops: Drops | None = None
    crash: Crash | None = None
    shutdown: Shutdown | None = None
    resources: list[Resources] = field(default_factory=list)
    stale_job_dirs: int = 0
    left: Leftovers | None = None
    left_after_load: Leftovers | None = None
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def problems(self) -> list[str]:
        found = list(self.errors)
        for phase in (self.load, self.drops, self.crash, self.shutdown):
            if phase is None:
                found.append("a phase did not run")
            else:
                found += phase.lost
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
        f"Seed {o['seed']}; the whole run took {run.seconds:.0f} s.",
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
        }
        for kind, what in meaning.items():
            tried, ok = t.tried[kind], t.ok[kind]
            lines.append(f"| {kind} | {what} | {tried} | {ok} | {tried - ok} |")
        after = run.left_after_load
        lines += [
            "",
            "Each client then lists its jobs: exactly the ones it started,"
            " all its own. Left on the machine once they had all ended:"
            f" {after.describe() if after else '-'}.",
            "",
        ]
    lines += [
        "### Server resources (threads | open fds | RSS MiB, from /proc/<pid>)",
        "",
        "grpcio's ThreadPoolExecutor never shrinks, so the baseline is taken after",
        "a warm-up that holds every thread of its pool at once (64 followers and",
        "16 slow Stop calls) and after our connections are closed. Twisted's",
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
    if run.drops is not None:
        d = run.drops
        lines += [
            "## 2. Disconnects",
            "",
            f"{sum(d.tried.values())} followers of 4 always-writing jobs, dropped"
            " after a random number of chunks (0-29), 12 at a time:",
            "",
            f"- cancelled by the client (gRPC cancel): {d.tried['cancel']}",
            f"- TCP reset (a relay closes with SO_LINGER 0): {d.tried['reset']}",
            f"- follower process SIGKILLed: {d.tried['kill']}",
            "",
            f"Server threads: {d.threads_before} before, {d.threads_peak} at the"
            f" peak, {d.threads_after} after ({d.settle_seconds:.1f} s to settle)."
            f" Phase time {d.seconds:.0f} s; slowest drop per kind (s): "
            + ", ".join(f"{k} {v:.1f}" for k, v in sorted(d.slowest.items()))
            + ".",
            "Afterwards 64 new followers (the server's cap) were all served, so no",
            "follower slot leaked; the 4 jobs were still running and their output",
            "had no gap. Lost: " + str(len(d.lost)) + ".",
            "",
        ]
    if run.crash is not None:
        c = run.crash
        lines += [
            "## 3. Server crash (SIGKILL)",
            "",
            f"{c.jobs} running jobs, each a shell with two background children and"
            f" an orphaned grandchild: {c.processes} processes below the server.",
            f"After SIGKILL of the server: {c.survivors} survived (all gone in"
            f" {c.death_seconds:.2f} s); {c.stale_cgroups} empty job cgroups stayed,",
            f"the restarted server removed them at start-up (log says so:"
            f" {c.restart_logged}; {c.cgroups_after_restart} left) and ran a new"
            f" job correctly: {c.new_job_ok}.",
            f"Not cleaned at restart: {run.stale_job_dirs} job directories (output"
            " logs) of the crashed run stay in the state dir.",
            "",
        ]
    if run.shutdown is not None:
        s = run.shutdown
        endings = ", ".join(f"{n} x {e}" for e, n in s.endings.items())
        lines += [
            "## 4. Server shutdown (SIGTERM)",
            "",
            f"{s.jobs} running jobs (half ignore SIGTERM), {s.streams} open streams,"
            f" stop grace {o['grace']:g} s.",
            f"Stream endings: {endings}.",
            f"The server exited with status {s.exit_code} after {s.seconds:.2f} s"
            f" (bound: grace + 5 s); {s.survivors} job processes survived; left"
            f" behind: {s.left.describe() if s.left else '-'}.",
            "",
        ]
    lines += _fast_parts(run)
    return "\n".join(lines)


def _fast_parts(run: Run) -> list[str]:
    left = run.left.describe() if run.left else "-"
    return [
        "## Left on the machine after the run",
        "",
        f"{left} (job cgroup parents searched by name in all of /sys/fs/cgroup;",
        "processes by working directory and cgroup; zombies among our children;",
        "mounts below the state dir).",
        "",
        "## 5 and 6. Hostile input and races (in `make test`)",
        "",
        "`tests/test_hostile_input.py`: hypothesis (derandomized, 80 examples per",
        "property) drives Start, Stop, Status, StreamOutput and List with raw",
        "request bytes over real mTLS: random and 128 KiB-boundary arguments, NUL",
        "bytes, invalid UTF-8 in ids, NaN/infinite/negative/huge limits and graces,",
        "uint64-max offsets, random and near-miss ids, messages over grpc's 4 MiB;",
        "never INTERNAL/UNKNOWN/UNAVAILABLE, the server keeps serving, and another",
        "user's running job is never seen, stopped or changed. 200 TCP connections",
        "that never finish the TLS handshake do not stop other clients.",
        "",
        "`tests/test_races.py`: rounds of jobs started together and then stopped,",
        "polled and followed from about 36 threads at once (over 6,000 calls):",
        "every Stop answer and every later Status is the same final status, states",
        "only move forward, every follower (and a late one) gets the same bytes,",
        "none reaches its deadline; and Stop racing Start 40 times never loses a",
        "job.",
        "",
    ]


def write(path: str, run: Run) -> None:
    with open(path, "w") as report:
        report.write(render(run))
