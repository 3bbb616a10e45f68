"""Tests for `twistd jobworker`: option validation and the plugin."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any, cast

from twisted.application.service import MultiService
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import (
    ILogObserver,
    LogEvent,
    LogLevel,
    formatEvent,
    globalLogPublisher,
)
from twisted.python import usage
from twisted.trial import unittest

from jobworker.errors import InvalidRequest
from jobworker.job.retention import Reaper, Retention
from jobworker.model import Limits
from jobworker.server import levers
from jobworker.server.notify import Readiness
from jobworker.server.reload import CertificateReload
from jobworker.server.service import JobWorkerServer
from jobworker.server.statelock import StateDirLock
from jobworker.server.tap import Options, makeService
from tests import pkiutil
from tests.apiutil import twistd_argv
from tests.cliutil import remove_parent_cgroups

REQUIRED = ["--tls-cert", "c.pem", "--tls-key", "c.key", "--client-ca", "ca.pem"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions([*REQUIRED, *args])
    return options


class OptionsTests(unittest.TestCase):
    def test_defaults(self) -> None:
        options = parse()
        self.assertEqual(options["listen"], "127.0.0.1:7443")
        self.assertEqual(options["state-dir"], "/var/lib/jobworker")
        self.assertEqual(options["stop-grace"], 10.0)
        self.assertEqual(options["max-followers"], 64)
        self.assertEqual(options["output-cap"], 1 << 30)
        self.assertFalse(options["no-isolation"])
        policy = options["policy"]
        self.assertEqual(
            policy.defaults, Limits(cpu=1.0, memory_bytes=512 << 20, pids=1024)
        )
        self.assertEqual(policy.maximums.memory_bytes, 4 << 30)
        self.assertEqual(policy.maximums.cpu, float(len(os.sched_getaffinity(0))))
        self.assertEqual(policy.maximums.pids, 4096)  # not the host's pid_max
        self.assertIsNone(policy.maximums.io_read_bps)

    def test_tls_files_are_required(self) -> None:
        error = self.assertRaises(usage.UsageError, Options().parseOptions, [])
        self.assertIn("--tls-cert", str(error))
        self.assertIn("--client-ca", str(error))

    def test_listen_takes_ipv6_in_brackets(self) -> None:
        self.assertEqual(parse("--listen", "[::1]:7443")["listen"], "[::1]:7443")

    def test_listen_refuses_a_bad_address(self) -> None:
        for value in ("7443", "host:99999", "::1:7443"):
            error = self.assertRaises(usage.UsageError, parse, "--listen", value)
            self.assertIn("--listen", str(error))

    def test_sizes_take_suffixes(self) -> None:
        options = parse(
            "--default-memory", "256M", "--max-memory", "1G", "--output-cap", "10M"
        )
        self.assertEqual(options["policy"].defaults.memory_bytes, 256 << 20)
        self.assertEqual(options["policy"].maximums.memory_bytes, 1 << 30)
        self.assertEqual(options["output-cap"], 10 << 20)

    def test_bad_size_names_the_option(self) -> None:
        error = self.assertRaises(usage.UsageError, parse, "--max-memory", "lots")
        self.assertIn("--max-memory", str(error))

    def test_io_maximum_alone_becomes_the_default(self) -> None:
        options = parse("--max-io-read-bps", "10M", "--max-io-write-bps", "5M")
        self.assertEqual(options["policy"].defaults.io_read_bps, 10 << 20)
        self.assertEqual(options["policy"].defaults.io_write_bps, 5 << 20)

    def test_lower_maximum_lowers_an_implicit_default(self) -> None:
        options = parse("--max-memory", "128M", "--max-cpu", "0.5")
        self.assertEqual(options["policy"].defaults.memory_bytes, 128 << 20)
        self.assertEqual(options["policy"].defaults.cpu, 0.5)

    def test_explicit_default_above_maximum_is_refused(self) -> None:
        error = self.assertRaises(
            usage.UsageError, parse, "--default-pids", "100", "--max-pids", "10"
        )
        self.assertIn("pids", str(error))

    def test_limits_may_be_unlimited(self) -> None:
        options = parse("--max-memory", "unlimited", "--default-memory", "none")
        self.assertIsNone(options["policy"].maximums.memory_bytes)
        self.assertIsNone(options["policy"].defaults.memory_bytes)

    def test_out_of_range_limit_is_refused(self) -> None:
        self.assertRaises(usage.UsageError, parse, "--default-cpu", "-1")
        self.assertRaises(usage.UsageError, parse, "--max-cpu", "many")

    def test_stop_grace_and_followers_are_checked(self) -> None:
        self.assertEqual(parse("--stop-grace", "2.5")["stop-grace"], 2.5)
        self.assertRaises(usage.UsageError, parse, "--stop-grace", "-1")
        self.assertRaises(usage.UsageError, parse, "--stop-grace", "soon")
        self.assertRaises(usage.UsageError, parse, "--max-followers", "0")

    def test_io_device_repeats(self) -> None:
        options = parse("--io-device", "8:0", "--io-device", "259:0")
        self.assertEqual(options["io-devices"], ["8:0", "259:0"])
        self.assertRaises(usage.UsageError, parse, "--io-device", "sda")

    def test_io_limits_below_the_floor_are_refused_naming_it(self) -> None:
        error = self.assertRaises(usage.UsageError, parse, "--max-io-write-bps", "100K")
        self.assertIn("below this server's floor, 1M/s", str(error))
        policy = parse("--min-io-bps", "64K", "--max-io-write-bps", "100K")["policy"]
        self.assertEqual(policy.maximums.io_write_bps, 100 << 10)
        refused = self.assertRaises(
            InvalidRequest, policy.resolve, Limits(io_read_bps=1)
        )
        self.assertIn("io-read 1/s is below this server's floor, 64K/s", str(refused))

    def test_bind_ro_repeats_and_must_be_absolute(self) -> None:
        options = parse("--bind-ro", "/opt", "--bind-ro", "/srv", "--no-seccomp")
        self.assertEqual(options["bind-ro"], ["/opt", "/srv"])
        self.assertTrue(options["no-seccomp"])
        self.assertRaises(usage.UsageError, parse, "--bind-ro", "relative/path")

    def test_live_restore_is_off_unless_asked_for(self) -> None:
        self.assertFalse(parse()["live-restore"])
        self.assertTrue(parse("--live-restore")["live-restore"])

    def test_job_uid_range_is_checked(self) -> None:
        self.assertEqual(parse()["job-uid-range"], (61184, 65519))
        options = parse("--job-uid-range", "70000-70009")
        self.assertEqual(options["job-uid-range"], (70000, 70009))
        for bad in ("5", "9-1", "0-10", "a-b"):
            self.assertRaises(usage.UsageError, parse, "--job-uid-range", bad)

    def test_job_user_and_no_isolation(self) -> None:
        options = parse("--job-user", "root", "--no-isolation")
        self.assertEqual(options["job-user"], "root")
        self.assertTrue(options["no-isolation"])


def wait_for_handler(pid: int, signum: int, timeout: float = 30.0) -> None:
    """Wait until process `pid` catches `signum` (twistd installs its handlers
    once the reactor runs, after the services have started)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/status") as status:
            caught = next(line for line in status if line.startswith("SigCgt:"))
        if int(caught.split()[1], 16) & (1 << (signum - 1)):
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} never caught signal {signum}")


class PluginTests(unittest.TestCase):
    async def test_sigterm_stops_twistd_gracefully_with_exit_zero(self) -> None:
        argv = twistd_argv(os.path.abspath(self.mktemp()))

        def run() -> tuple[int, str]:
            with subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT
            ) as server:
                assert server.stdout is not None
                lines = []
                for raw in server.stdout:
                    lines.append(raw.decode())
                    if "API listening" in lines[-1]:
                        wait_for_handler(server.pid, signal.SIGTERM)
                        server.send_signal(signal.SIGTERM)
                        break
                try:
                    rest, _ = server.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    server.kill()
                    raise
                return server.returncode, "".join(lines) + rest.decode()

        code, log = await deferToThread(run)
        self.assertIn("Server Shut Down", log)
        self.assertEqual(code, 0, log)

    async def test_twistd_finds_the_plugin(self) -> None:
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        out, err, code = await getProcessOutputAndValue(
            twistd, ["jobworker", "--help"], env={"PATH": os.defpath}, path=ROOT
        )
        self.assertEqual(code, 0, err)
        for option in (b"--listen", b"--tls-cert", b"--no-isolation", b"--max-cpu"):
            self.assertIn(option, out)
        for lever in (
            b"--max-jobs-per-user",
            b"--max-followers-per-user",
            b"--user-memory",
            b"--user-pids",
            b"--user-cpu",
            b"--total-memory",
            b"--total-pids",
            b"--total-cpu",
            b"--user-output-quota",
            b"--min-free-disk",
            b"--retain",
            b"--retain-jobs",
        ):
            self.assertIn(lever, out)


class MakeServiceTests(unittest.TestCase):
    def setUp(self) -> None:
        self.pki = pkiutil.pki_dir()

    def config(self, *args: str, key: str = "server.key") -> Options:
        options = Options()
        options.parseOptions(
            [
                "--listen",
                "127.0.0.1:0",
                "--tls-cert",
                os.path.join(self.pki, "server.pem"),
                "--tls-key",
                os.path.join(self.pki, key),
                "--client-ca",
                os.path.join(self.pki, "client-ca.pem"),
                "--state-dir",
                self.mktemp(),
                *args,
            ]
        )
        return options

    def test_make_service_builds_the_api_server(self) -> None:
        service = makeService(self.config("--no-isolation"))
        self.assertIsInstance(service, MultiService)
        self.assertEqual(
            [type(child) for child in service],
            [StateDirLock, Reaper, JobWorkerServer, CertificateReload, Readiness],
        )

    def test_the_reaper_removes_with_the_managers_remove(self) -> Any:
        service = makeService(
            self.config("--no-isolation", "--retain=12h", "--retain-jobs=5")
        )
        [reaper] = [child for child in service if isinstance(child, Reaper)]
        server = service.getServiceNamed("api")
        self.assertEqual(reaper.retention, Retention(12 * 3600.0, 5))
        self.assertEqual(reaper._remove, server.manager.remove)
        service.startService()
        self.assertTrue(reaper.running)
        return service.stopService()

    def test_second_server_on_one_state_dir_is_refused(self) -> None:
        config = self.config("--no-isolation")
        first = makeService(config)
        error = self.assertRaises(SystemExit, makeService, config)
        self.assertIn("another jobworker server", str(error.code))
        self.assertIn(f"pid {os.getpid()}", str(error.code))
        first.stopService()
        makeService(config).stopService()

    def test_no_isolation_warns_that_it_is_for_development(self) -> None:
        events: list[LogEvent] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        makeService(self.config("--no-isolation"))
        warnings = [
            formatEvent(event)
            for event in events
            if event["log_level"] == LogLevel.warn
        ]
        self.assertTrue(any("development only" in text for text in warnings), warnings)

    def test_bad_tls_material_is_one_line(self) -> None:
        config = self.config("--no-isolation", key="bob.key")
        error = self.assertRaises(SystemExit, makeService, config)
        message = str(error.code)
        self.assertTrue(message.startswith("jobworker: cannot start: "), message)
        self.assertNotIn("\n", message)

    def test_refuses_to_isolate_without_root(self) -> None:
        self.patch(os, "geteuid", lambda: 1000)
        error = self.assertRaises(SystemExit, makeService, self.config())
        self.assertIn("needs root", str(error.code))
        self.assertIn("--no-isolation", str(error.code))

    def test_isolates_jobs_when_root(self) -> None:
        if os.geteuid() != 0:
            raise unittest.SkipTest("isolation needs root")
        config = self.config()
        self.addCleanup(remove_parent_cgroups, config["state-dir"])
        service = makeService(config)
        self.assertEqual(
            [type(child) for child in service],
            [StateDirLock, Reaper, JobWorkerServer, CertificateReload, Readiness],
        )


class LeverTests(unittest.TestCase):
    """Per-user caps and host totals: the options, their defaults, their checks."""

    def test_totals_default_to_the_hosts_figures(self) -> None:
        options = parse()
        totals = options["totals"]
        self.assertEqual(totals.cpu, float(len(os.sched_getaffinity(0))))
        self.assertEqual(totals.memory_bytes, int(levers.host_memory() * 0.9))
        self.assertEqual(totals.pids, levers.pid_max() // 2)
        self.assertEqual(options["per-user"], Limits())
        self.assertEqual(options["max-jobs-per-user"], 128)
        self.assertIsNone(options["max-followers-per-user"])
        self.assertEqual(options["user-output-quota"], 10 << 30)
        self.assertEqual(options["min-free-disk"], 1 << 30)
        retention = (options["retain"], options["retain-jobs"])
        self.assertEqual(retention, (7 * 86400, 1000))

    def test_retention_levers_take_durations_or_forever(self) -> None:
        options = parse("--retain=1h30m", "--retain-jobs=10")
        self.assertEqual((options["retain"], options["retain-jobs"]), (5400, 10))
        options = parse("--retain=forever", "--retain-jobs=unlimited")
        self.assertEqual((options["retain"], options["retain-jobs"]), (None, None))
        text = " ".join(Options().getUsage().split())
        self.assertIn("no age limit. [default: 7d]", text)
        for flag, value, why in (
            ("--retain", "0", "below 1s"),
            ("--retain", "0.5s", "below 1s"),
            ("--retain", "a week", "not a duration"),
            ("--retain-jobs", "0", "1..100000000"),
        ):
            error = self.assertRaises(usage.UsageError, parse, f"{flag}={value}")
            self.assertIn(f"{flag}: ", str(error))
            self.assertIn(why, str(error))

    def test_storage_levers_are_parsed_and_shown_as_sizes(self) -> None:
        options = parse("--user-output-quota=unlimited", "--min-free-disk=0")
        self.assertEqual(
            (options["user-output-quota"], options["min-free-disk"]), (None, 0)
        )
        options = parse("--user-output-quota=2G", "--min-free-disk=512M")
        self.assertEqual(options["user-output-quota"], 2 << 30)
        self.assertEqual(options["min-free-disk"], 512 << 20)
        text = " ".join(Options().getUsage().split())
        self.assertIn("truncated. [default: 10G]", text)
        self.assertIn("[default: 1G]", text)

    def test_user_limits_and_totals_are_parsed(self) -> None:
        options = parse(
            "--user-memory=2G",
            "--user-pids=500",
            "--user-cpu=1.5",
            "--total-memory=8G",
            "--total-pids=5000",
            "--total-cpu=2",
            "--max-jobs-per-user=3",
            "--max-followers-per-user=5",
        )
        self.assertEqual(
            options["per-user"], Limits(cpu=1.5, memory_bytes=2 << 30, pids=500)
        )
        self.assertEqual(
            options["totals"], Limits(cpu=2.0, memory_bytes=8 << 30, pids=5000)
        )
        self.assertEqual(
            (options["max-jobs-per-user"], options["max-followers-per-user"]), (3, 5)
        )

    def test_a_jobs_maximum_is_lowered_to_its_users_limit(self) -> None:
        policy = parse("--user-memory=256M", "--user-pids=100")["policy"]
        self.assertEqual(policy.maximums.memory_bytes, 256 << 20)
        self.assertEqual(policy.maximums.pids, 100)
        self.assertEqual(policy.defaults.memory_bytes, 256 << 20)  # follows it
        self.assertEqual(policy.defaults.pids, 100)

    def test_a_user_limit_above_the_total_is_refused(self) -> None:
        error = self.assertRaises(
            usage.UsageError, parse, "--user-memory=4G", "--total-memory=2G"
        )
        self.assertIn("--user-memory 4G is above --total-memory 2G", str(error))

    def test_bad_lever_values_name_their_option(self) -> None:
        for flag, value in (
            ("--max-jobs-per-user", "0"),
            ("--user-memory", "lots"),
            ("--total-pids", "-3"),
            ("--user-cpu", "0"),
            ("--user-output-quota", "much"),
            ("--min-free-disk", "-1G"),
        ):
            error = self.assertRaises(usage.UsageError, parse, f"{flag}={value}")
            self.assertIn(flag, str(error))
