"""Prometheus metrics: scraped over HTTP from a real server, counters moving."""

from __future__ import annotations

import urllib.request
from dataclasses import replace
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from jobworker.job.events import REQUEST_CAUSE
from jobworker.job.retention import Reaper, Retention
from jobworker.model import JobState, JobStatus, Limits
from jobworker.server.metrics import (
    MetricsJobEvents,
    ServerMetrics,
    job_outcome,
)
from jobworker.server.tap import METRICS_SERVICE
from tests.cliutil import CLITestCase, started_job

reactor: Any = _reactor
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition: (name, sorted labels) -> value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class ScrapeTests(CLITestCase):
    server_options = ("--no-isolation", "--metrics-listen", "127.0.0.1:0")

    async def scrape(self) -> Samples:
        port = self.harness.service.getServiceNamed(METRICS_SERVICE).port
        url = f"http://127.0.0.1:{port}/metrics"

        def get() -> tuple[str, str]:
            with urllib.request.urlopen(url, timeout=30) as response:
                return response.headers["Content-Type"], response.read().decode()

        kind, text = await deferToThread(get)
        self.assertTrue(kind.startswith("text/plain"), kind)
        return samples(text)

    async def test_counters_move_with_jobs_calls_and_refusals(self) -> None:
        before = await self.scrape()
        self.assertEqual(before[("jobworker_jobs_started_total", ())], 0)
        self.assertEqual(before[("jobworker_jobs", (("state", "running"),))], 0)
        run = await self.harness.cli("run", "--", "sh", "-c", "echo hello; exit 3")
        self.assertEqual(run.code, 3, run.err)
        missing = await self.harness.cli("status", "0000dead")
        self.assertEqual(missing.code, 1)
        after = await self.scrape()
        self.assertEqual(after[("jobworker_jobs_started_total", ())], 1)
        self.assertEqual(
            after[("jobworker_jobs_ended_total", (("outcome", "failed"),))], 1
        )
        self.assertEqual(after[("jobworker_jobs", (("state", "exited"),))], 1)
        self.assertEqual(
            after[("jobworker_calls_total", (("code", "OK"), ("method", "Start")))], 1
        )
        self.assertEqual(
            after[
                ("jobworker_calls_total", (("code", "NOT_FOUND"), ("method", "Status")))
            ],
            1,
        )
        self.assertEqual(
            after[
                (
                    "jobworker_refusals_total",
                    (("code", "NOT_FOUND"), ("method", "Status")),
                )
            ],
            1,
        )
        self.assertEqual(after[("jobworker_start_seconds_count", ())], 1)
        self.assertGreater(after[("jobworker_start_seconds_sum", ())], 0)
        self.assertEqual(after[("jobworker_output_written_bytes_total", ())], 6)
        self.assertEqual(after[("jobworker_output_streamed_bytes_total", ())], 6)
        self.assertEqual(after[("jobworker_cgroup_cleanup_failures_total", ())], 0)

    async def test_refused_start_is_counted(self) -> None:
        refused = await self.harness.cli("start", "--", "/nonexistent/program")
        self.assertEqual(refused.code, 1)
        scraped = await self.scrape()
        self.assertEqual(scraped[("jobworker_job_starts_refused_total", ())], 1)
        self.assertEqual(
            scraped[
                (
                    "jobworker_refusals_total",
                    (("code", "FAILED_PRECONDITION"), ("method", "Start")),
                )
            ],
            1,
        )

    async def test_calls_the_gate_refuses_are_counted(self) -> None:
        refused = await self.harness.cli("list", user="badrole")
        self.assertEqual(refused.code, 1, refused.err)
        scraped = await self.scrape()
        key = (
            "jobworker_refusals_total",
            (("code", "PERMISSION_DENIED"), ("method", "List")),
        )
        self.assertEqual(scraped.get(key), 1, sorted(scraped))

    async def test_open_followers_are_a_gauge(self) -> None:
        job_id = await started_job(self.harness, "sleep", "600")
        following = self.harness.cli("logs", "-f", job_id)
        for _ in range(500):
            scraped = await self.scrape()
            if scraped[("jobworker_followers", ())] == 1:
                break
            await deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(scraped[("jobworker_followers", ())], 1)
        self.assertEqual(scraped[("jobworker_jobs", (("state", "running"),))], 1)
        await self.harness.cli("stop", "--grace", "0", job_id)
        await following
        scraped = await self.scrape()
        self.assertEqual(scraped[("jobworker_followers", ())], 0)
        self.assertEqual(
            scraped[("jobworker_jobs_ended_total", (("outcome", "stopped"),))], 1
        )


def _ended(**fields: Any) -> JobStatus:
    return JobStatus(
        "id", "alice", (b"x",), JobState.KILLED, Limits(), 0.0, ended_at=1.0, **fields
    )


class JobEventsTests(unittest.TestCase):
    def test_outcomes(self) -> None:
        self.assertEqual(job_outcome(_ended(exit_code=0)), "exited")
        self.assertEqual(job_outcome(_ended(exit_code=2)), "failed")
        self.assertEqual(job_outcome(_ended(signal=9)), "killed")
        self.assertEqual(job_outcome(_ended(signal=15, stop_requested=True)), "stopped")
        self.assertEqual(
            job_outcome(_ended(signal=9, stop_requested=True, oom_killed=True)), "oom"
        )

    def test_cgroup_cleanup_failures_are_counted(self) -> None:
        metrics = ServerMetrics()
        MetricsJobEvents(metrics).cleanup_failed("id")
        value = metrics.registry.get_sample_value(
            "jobworker_cgroup_cleanup_failures_total"
        )
        self.assertEqual(value, 1)

    def test_removals_are_counted_by_cause(self) -> None:
        """A real reaper's removals for age and count, and one by a caller."""
        clock = MemoryReactorClock()
        metrics = ServerMetrics()
        events = MetricsJobEvents(metrics)
        removed: list[str] = []

        def remove(job_id: str, reason: str, cause: str) -> Deferred[None]:
            removed.append(job_id)
            events.removed(_ended(exit_code=0), reason, cause)
            return succeed(None)

        reaper = Reaper(Retention(age=60.0, count=1), reactor=clock)
        reaper.attach(remove)
        reaper.startService()
        for job_id in ("a", "b"):
            reaper.ended(replace(_ended(exit_code=0), id=job_id, ended_at=0.0))
        clock.advance(61)
        events.removed(_ended(exit_code=0), "by alice", REQUEST_CAUSE)
        self.assertEqual(removed, ["a", "b"])
        for cause, count in (("retain", 1), ("retain-jobs", 1), ("request", 1)):
            value = metrics.registry.get_sample_value(
                "jobworker_jobs_removed_total", {"cause": cause}
            )
            self.assertEqual(value, count, cause)

    def test_written_bytes_never_go_down_when_a_job_is_removed(self) -> None:
        metrics = ServerMetrics()
        job = replace(_ended(exit_code=0), output_bytes=10)
        board = [job]
        metrics.watch(lambda: list(board), lambda: 0)
        name = "jobworker_output_written_bytes_total"
        self.assertEqual(metrics.registry.get_sample_value(name), 10)
        board.clear()  # off the board before the removal is counted
        self.assertEqual(metrics.registry.get_sample_value(name), 10)
        MetricsJobEvents(metrics).removed(job, "by alice", REQUEST_CAUSE)
        self.assertEqual(metrics.registry.get_sample_value(name), 10)
        board.append(replace(job, id="new", output_bytes=5))
        self.assertEqual(metrics.registry.get_sample_value(name), 15)


class CallCounterTests(unittest.TestCase):
    def test_each_call_and_refusal_counts_under_its_labels(self) -> None:
        metrics = ServerMetrics()
        for method, code in [("Status", "OK"), ("Status", "OK"), ("List", "OK")]:
            metrics.answered(method, code)
        metrics.answered("Status", "NOT_FOUND")
        metrics.refused("Status", "NOT_FOUND")
        metrics.refused("Status", "NOT_FOUND")

        def value(name: str, method: str, code: str) -> float | None:
            labels = {"method": method, "code": code}
            return metrics.registry.get_sample_value(name, labels)

        self.assertEqual(value("jobworker_calls_total", "Status", "OK"), 2)
        self.assertEqual(value("jobworker_calls_total", "List", "OK"), 1)
        self.assertEqual(value("jobworker_calls_total", "Status", "NOT_FOUND"), 1)
        self.assertEqual(value("jobworker_refusals_total", "Status", "NOT_FOUND"), 2)
        self.assertIsNone(value("jobworker_refusals_total", "Status", "OK"))
