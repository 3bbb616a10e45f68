"""The benchmark suite: which runs, in which order, and the table they make.

Baseline and jobworker runs alternate (bare, jobworker, bare, ...) so that
both see the same noise on this shared machine. Three jobworker servers
are used, each in its own process: `main` (full isolation) for
throughput, fan-out, start latency and the control plane; `bare-jobs`
(`--no-isolation`) for start latency without isolation; and a fresh
`scale` server, so its memory figures start from an idle process.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench import baselines, figures, flood, retained
from bench.common import GIB, MIB
from bench.report import Row, ratio_row
from bench.servers import BareProcess, JobWorkerProcess
from bench.stats import Summary, percentile
from jobworker.server.api.quota import CALL_THREADS
from jobworker.server.service import UNARY_HEADROOM

MAX_FOLLOWERS = 256
# grpc threads of the jobworker server, which the bare server gets too.
SERVER_THREADS = MAX_FOLLOWERS + CALL_THREADS + UNARY_HEADROOM
# Runs past the second are skipped when they would take the suite past
# this many seconds (`make bench` must stay under 10 minutes on a busy
# machine), given what the later parts need (measured here, with margin).
BUDGET = 500.0
RESERVE = {"unary": 380.0, "throughput": 300.0, "fanout": 60.0}
FANOUT = 50


@dataclass(frozen=True)
class Plan:
    """How much of everything to do."""

    disk_bytes: int = 2 * GIB
    stream_runs: int = 5
    one_bytes: int = GIB
    fanout_runs: int = 3
    fanout_bytes: int = 256 * MIB
    bare_fanout_bytes: int = 32 * MIB
    start_runs: int = 3
    starts: int = 200
    unary_runs: int = 3
    unary_seconds: float = 2.0
    scale_jobs: int = 500
    scale_followers: int = 200
    argv_jobs: int = 50
    flood_runs: int = 3


QUICK = Plan(GIB // 4, 3, GIB // 4, 2, 32 * MIB, 16 * MIB, 2, 50, 2, 1.0, 100, 40, 20)

Results = dict[str, list[Any]]


class Suite:
    """Runs a `Plan` against servers it starts (and always stops)."""

    def __init__(self, plan: Plan, pki: str, work: str) -> None:
        self.plan = plan
        self.pki = pki
        self.work = work
        self.results: Results = defaultdict(list)
        self.leftovers: list[str] = []
        self.began = time.monotonic()

    def _log(self, what: str) -> None:
        print(f"bench: {time.monotonic() - self.began:5.0f} s  {what}", flush=True)

    def _jobworker(
        self, name: str, *, isolation: bool = True, options: tuple[str, ...] = ()
    ) -> JobWorkerProcess:
        return JobWorkerProcess(
            self.pki,
            self.work,
            name,
            isolation=isolation,
            max_followers=MAX_FOLLOWERS,
            options=options,
        )

    def _pairs(
        self,
        runs: int,
        bare: Callable[[], Any],
        ours: Callable[[], Any],
        reserve: float,
    ) -> None:
        """`runs` pairs of runs, but only two if more would not fit the budget.

        `reserve` is the time the rest of the suite needs after these runs.
        """
        for run in range(runs):
            began = time.monotonic()
            settle()
            bare()
            settle()
            ours()
            pair = time.monotonic() - began
            spent = time.monotonic() - self.began
            if run + 1 < runs and run >= 1 and spent + pair + reserve > BUDGET:
                self._log(f"{run + 1} runs: no time for more")
                return

    def run(self) -> None:
        plan, out = self.plan, self.results
        self._log("baselines: pipe, disk and unshare")
        out["pipe"] = [baselines.pipe_rate(1).median for _ in range(3)]
        out["disk"] = [
            baselines.disk_rate(self.work, plan.disk_bytes) for _ in range(2)
        ]
        out["unshare"] = [baselines.unshare_time(1).median for _ in range(30)]
        bare = BareProcess(self.pki, SERVER_THREADS)
        try:
            main = self._jobworker("main")
            try:
                # Starts and calls first: the GiBs of output written later
                # are flushed to disk for minutes, which slows every start.
                self._starts(main)
                self._unary(bare, main)
                self._flood(main)
                # The same output through the job's helper (--live-restore),
                # measured in the same pairs as the default path.
                live = self._jobworker("live", options=("--live-restore",))
                try:
                    self._throughput(bare, main, live)
                    self._fanout(bare, main, live)
                finally:
                    self.leftovers += live.stop()
            finally:
                self.leftovers += main.stop()
        finally:
            bare.stop()
        self._log("5. scale")
        scale = self._jobworker("scale")
        try:
            out["scale"].append(
                figures.scale(scale, plan.scale_jobs, plan.scale_followers)
            )
        finally:
            self.leftovers += scale.stop()
        self._big_argv()
        self._log("done")

    def _big_argv(self) -> None:
        self._log("5. scale: finished jobs with a 1 MiB argv")
        server = self._jobworker("argv")
        try:
            self.results["argv"].append(
                retained.per_big_argv_job(server, self.plan.argv_jobs)
            )
        finally:
            self.leftovers += server.stop()

    def _starts(self, main: JobWorkerProcess) -> None:
        plan, out = self.plan, self.results
        self._log("3. start latency, isolated")
        for _ in range(plan.start_runs):
            out["start_iso"].append(figures.start_latency(main, plan.starts))
        self._log("3. start latency, --no-isolation")
        plain = self._jobworker("bare-jobs", isolation=False)
        try:
            for _ in range(plan.start_runs):
                out["start_plain"].append(figures.start_latency(plain, plan.starts))
        finally:
            self.leftovers += plain.stop()

    def _flood(self, main: JobWorkerProcess) -> None:
        self._log(f"6. flood: {flood.STARTS} concurrent Starts of one user")
        for _ in range(self.plan.flood_runs):
            settle()
            self.results["flood"].append(flood.flood(main, self.pki))

    def run_flood(self) -> None:
        """Only figure 6 (`python -m bench --only flood`)."""
        main = self._jobworker("main")
        try:
            self._flood(main)
        finally:
            self.leftovers += main.stop()

    def _throughput(
        self, bare: BareProcess, main: JobWorkerProcess, live: JobWorkerProcess
    ) -> None:
        plan, out = self.plan, self.results
        self._log("1. output throughput, one follower")

        def ours() -> None:
            out["one"].append(figures.throughput(main, plan.one_bytes))
            settle()
            out["live_one"].append(figures.throughput(live, plan.one_bytes))

        self._pairs(
            plan.stream_runs,
            lambda: out["bare_one"].append(
                baselines.stream_rate(bare, 1, plan.one_bytes, 1)
            ),
            ours,
            RESERVE["throughput"],
        )

    def _fanout(
        self, bare: BareProcess, main: JobWorkerProcess, live: JobWorkerProcess
    ) -> None:
        plan, out = self.plan, self.results
        self._log(f"2. fan-out, {FANOUT} followers")

        def ours() -> None:
            out["fanout"].append(figures.fanout(main, FANOUT, plan.fanout_bytes))
            settle()
            out["live_fanout"].append(figures.fanout(live, FANOUT, plan.fanout_bytes))

        self._pairs(
            plan.fanout_runs,
            lambda: out["bare_fanout"].append(
                baselines.stream_rate(bare, FANOUT, plan.bare_fanout_bytes, 10)
            ),
            ours,
            RESERVE["fanout"],
        )

    def _unary(self, bare: BareProcess, main: JobWorkerProcess) -> None:
        plan, out = self.plan, self.results
        job_id = figures.finished_job(main)
        self._log("4. control plane")
        for threads in (1, 8):

            def bare_calls(threads: int = threads) -> None:
                out[f"bare_unary_{threads}"].append(
                    baselines.unary(bare, threads, plan.unary_seconds)
                )

            def status_calls(threads: int = threads) -> None:
                out[f"unary_{threads}"].append(
                    figures.control_plane(main, job_id, threads, plan.unary_seconds)
                )

            self._pairs(plan.unary_runs, bare_calls, status_calls, RESERVE["unary"])


def _of(items: list[dict[str, Any]], key: str, factor: float = 1.0) -> Summary:
    return Summary.of([item[key] * factor for item in items])


def settle() -> None:
    """Start a run as the one before started: no dirty or cached pages.

    Every run of a job's output grows the page cache by the output's size
    and nothing frees it while the server runs; on this VM, memory never
    touched before costs about 7 times as much to fill as memory freed
    and reused (see "What limits the figures"), so without this each run
    would be slower than the one before. Writes back, then drops the clean
    page cache (root only, as the suite is).
    """
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as caches:
        caches.write("1")


def rows(out: Results) -> list[Row]:
    """The table: every figure, its baseline, ratio and target."""
    table = [
        Row(
            "Raw pipe rate, the physical ceiling",
            Summary.of(out["pipe"]).text() + " MiB/s",
        ),
        Row(
            "Disk write rate of the state directory, the sustained ceiling",
            Summary.of(out["disk"]).text() + " MiB/s",
        ),
        ratio_row(
            "1. Output throughput, one follower (CLI to /dev/null)",
            _of(out["one"], "rate"),
            Summary.of(out["bare_one"]),
            "MiB/s",
            target=0.7,
        ),
        ratio_row(
            "1. Output throughput, one follower, --live-restore (the helper writes)",
            _of(out["live_one"], "rate"),
            Summary.of(out["bare_one"]),
            "MiB/s",
            target=0.7,
        ),
    ]
    table += _fanout_rows(out)
    table += _start_rows(out)
    table += _unary_rows(out)
    table += _scale_rows(out["scale"][0])
    table += _argv_rows(out["argv"][0])
    table += flood.rows(out["flood"])
    return table


def _argv_rows(argv: dict[str, Any]) -> list[Row]:
    """Held once: a job's 1 MiB argv costs about 1 MiB, not two."""
    per_job = argv["per_job"] / MIB
    return [
        Row(
            "5. Scale: server RSS per finished job kept with a 1 MiB argv",
            f"{per_job:.2f} MiB",
            f"argv {argv['argv_bytes'] / MIB:.2f} MiB",
            target="< 1.5 MiB (argv held once)",
            met=argv["per_job"] < 1.5 * argv["argv_bytes"],
        )
    ]


def _fanout_rows(out: Results) -> list[Row]:
    runs = out["fanout"]
    growth = _of(runs, "rss_growth", 1 / MIB)
    rate, same = _fanout_pair(out, runs, f"2. Fan-out, {FANOUT} followers, total")
    live = _fanout_pair(
        out,
        out["live_fanout"],
        f"2. Fan-out, {FANOUT} followers, total, --live-restore",
    )
    return [
        rate,
        Row(
            "2. Fan-out: server peak RSS over idle",
            f"{growth.text(1)} MiB",
            f"idle {_of(runs, 'idle_rss', 1 / MIB).text(1)} MiB",
            target="< 64 MiB",
            met=growth.high < 64,
        ),
        same,
        *live,
    ]


def _fanout_pair(out: Results, runs: list[Any], label: str) -> tuple[Row, Row]:
    """The fan-out rate of `runs` against the bare runs, and their hashes."""
    same = all(run["same_bytes"] for run in runs)
    where = label.removeprefix(f"2. Fan-out, {FANOUT} followers, total")
    return (
        ratio_row(
            label,
            _of(runs, "rate"),
            Summary.of(out["bare_fanout"]),
            "MiB/s",
            target=0.6,
        ),
        Row(
            f"2. Fan-out{where}: every follower's bytes hash the same",
            "yes" if same else "NO",
            target="yes",
            met=same,
        ),
    )


def _start_rows(out: Results) -> list[Row]:
    unshare = Summary.of(out["unshare"]).scaled(1000)
    found: list[Row] = []
    for key, label in (("start_iso", "isolated"), ("start_plain", "--no-isolation")):
        for name, fraction, limit in (("p50", 0.5, 50.0), ("p99", 0.99, 120.0)):
            value = Summary.of([percentile(run, fraction) * 1000 for run in out[key]])
            isolated = key == "start_iso"
            found.append(
                Row(
                    f"3. Start latency {name}, {label}",
                    f"{value.text(1)} ms",
                    f"unshare {unshare.text(1)} ms",
                    f"{value.median / unshare.median:.1f} x unshare",
                    f"≤ {limit:g} ms" if isolated else "—",
                    value.median <= limit if isolated else None,
                )
            )
    return found


def _unary_rows(out: Results) -> list[Row]:
    found: list[Row] = []
    for threads in (1, 8):
        ours, bare = out[f"unary_{threads}"], out[f"bare_unary_{threads}"]
        who = "1 client" if threads == 1 else "8 client threads"
        found.append(
            ratio_row(
                f"4. Status calls/s, {who}",
                _of(ours, "per_second"),
                _of(bare, "per_second"),
                "/s",
                target=0.6,
            )
        )
        for name, target in (("p50", 0.6), ("p99", None)):
            found.append(
                ratio_row(
                    f"4. Status {name}, {who}",
                    _of(ours, name, 1000),
                    _of(bare, name, 1000),
                    "ms",
                    digits=2,
                    target=target,
                    lower_is_better=True,
                )
            )
    return found


def _scale_rows(scale: dict[str, Any]) -> list[Row]:
    answered = scale["status_calls"] - scale["status_failures"]
    under_load = scale["status"]
    every = answered == scale["status_calls"] and scale["followers_ok"]
    return [
        Row("5. Scale: server RSS when idle", f"{scale['idle_rss'] / MIB:.1f} MiB"),
        Row(
            "5. Scale: server RSS per running job",
            f"{scale['per_running'] / 1024:.0f} KiB",
        ),
        Row(
            "5. Scale: server RSS per follower",
            f"{scale['per_follower'] / 1024:.0f} KiB",
        ),
        Row(
            "5. Scale: server RSS per finished job kept",
            f"{scale['per_finished'] / 1024:.0f} KiB",
        ),
        Row(
            "5. Scale: every call answered under load",
            f"{answered}/{scale['status_calls']} Status, List of"
            f" {scale['list_jobs']} jobs in {scale['list_seconds'] * 1000:.0f} ms,"
            f" Status p50 {under_load['p50'] * 1000:.2f} ms with 8 threads",
            target="all",
            met=every,
        ),
    ]
