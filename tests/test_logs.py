"""The server's logs on a real twistd: JSON lines, and start-up failures as one line."""

from __future__ import annotations

# grpc-core reads its settings when grpc is first imported: ours go first.
import jobworker.server.api  # noqa: F401

# isort: split
import json
import os
import signal
import socket
import subprocess
from collections.abc import Callable
from typing import Any

import grpc
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, eventFromJSON, formatEvent
from twisted.python import usage
from twisted.trial import unittest

from jobworker.server.logformat import JSON_OBSERVER
from jobworker.server.tap import TwistdOptions
from jobworker.v1 import jobworker_pb2 as pb
from jobworker.v1 import jobworker_pb2_grpc as pb_grpc
from tests.apiutil import channel_credentials, twistd_argv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRED = ["--tls-cert", "c.pem", "--tls-key", "c.key", "--client-ca", "ca.pem"]


def run_twistd(argv: list[str], timeout: float = 60) -> tuple[int, str]:
    """Run twistd to its end (blocking): exit code, stdout and stderr."""
    done = subprocess.run(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )
    return done.returncode, done.stdout.decode()


def with_option(argv: list[str], option: str, value: str) -> list[str]:
    """`argv` with `option`'s value replaced."""
    argv = list(argv)
    argv[argv.index(option) + 1] = value
    return argv


class TwistdOptionsTests(unittest.TestCase):
    """The plugin's options: one-line usage errors, --log-format."""

    def parse(self, *args: str, twistd: dict[str, Any] | None = None) -> TwistdOptions:
        options = TwistdOptions()
        options.parent = twistd  # type: ignore[assignment]
        options.parseOptions([*REQUIRED, *args])
        return options

    def test_usage_error_is_one_line_naming_the_option(self) -> None:
        error = self.assertRaises(SystemExit, self.parse, "--max-memory", "lots")
        message = str(error.code)
        self.assertTrue(message.startswith("jobworker: cannot start: --max-memory"))
        self.assertNotIn("\n", message)

    def test_missing_option_is_named(self) -> None:
        error = self.assertRaises(
            SystemExit, TwistdOptions().parseOptions, ["--tls-cert", "c.pem"]
        )
        self.assertEqual(
            error.code, "jobworker: cannot start: missing --tls-key, --client-ca"
        )

    def test_log_format_is_text_or_json(self) -> None:
        self.assertEqual(self.parse()["log-format"], "text")
        error = self.assertRaises(SystemExit, self.parse, "--log-format", "xml")
        self.assertIn("--log-format: 'xml' is not text or json", str(error.code))

    def test_json_becomes_twistds_logger(self) -> None:
        twistd: dict[str, Any] = {"nodaemon": True, "logfile": None, "logger": None}
        self.parse("--log-format", "json", twistd=twistd)
        self.assertEqual(twistd["logger"], JSON_OBSERVER)
        twistd = {"nodaemon": True, "logfile": None, "logger": None}
        self.parse(twistd=twistd)
        self.assertIsNone(twistd["logger"])

    def test_json_needs_stdout(self) -> None:
        for twistd, words in (
            ({"nodaemon": False}, "--nodaemon"),
            ({"nodaemon": True, "logfile": "x.log"}, "--logfile"),
            ({"nodaemon": True, "syslog": True}, "--syslog"),
        ):
            error = self.assertRaises(
                SystemExit, self.parse, "--log-format", "json", twistd=twistd
            )
            self.assertIn(words, str(error.code))
        self.assertTrue(issubclass(TwistdOptions, usage.Options))


class StartUpFailureTests(unittest.TestCase):
    """Every start-up failure of twistd is one line and exit code 1."""

    async def test_missing_option_is_one_line_without_the_help(self) -> None:
        argv = twistd_argv(os.path.abspath(self.mktemp()))
        index = argv.index("--client-ca")
        del argv[index : index + 2]
        code, out = await deferToThread(run_twistd, argv)
        self.assertEqual(code, 1, out)
        self.assertEqual(out, "jobworker: cannot start: missing --client-ca\n")

    async def test_busy_port_is_one_line(self) -> None:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            argv = with_option(
                twistd_argv(os.path.abspath(self.mktemp())),
                "--listen",
                f"127.0.0.1:{port}",
            )
            code, out = await deferToThread(run_twistd, argv)
        self.assertEqual(code, 1, out)
        failures = [line for line in out.splitlines() if "cannot" in line]
        self.assertEqual(len(failures), 1, out)
        self.assertTrue(
            failures[0].endswith(
                f"jobworker: cannot start: cannot listen on 127.0.0.1:{port}:"
                " Address already in use"
            ),
            out,
        )
        self.assertNotIn("Traceback", out)
        self.assertNotIn("ListenFailed", out)

    async def test_busy_metrics_port_is_one_line(self) -> None:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            argv = twistd_argv(os.path.abspath(self.mktemp()))
            argv += ["--metrics-listen", f"127.0.0.1:{port}"]
            code, out = await deferToThread(run_twistd, argv)
        self.assertEqual(code, 1, out)
        failures = [line for line in out.splitlines() if "cannot start" in line]
        self.assertEqual(len(failures), 1, out)
        self.assertIn(f"127.0.0.1:{port}", failures[0])
        self.assertIn("Address already in use", failures[0])
        self.assertNotIn("Traceback", out)


class JSONLogTests(unittest.TestCase):
    """`--log-format json`: every line one event, parsed back with its fields."""

    def serve(self, work: Callable[[int], None]) -> list[dict[str, Any]]:
        """Run the server (JSON logs), `work(port)` once it listens, then
        SIGTERM; every line of its output as a parsed event (blocking)."""
        argv = [*twistd_argv(os.path.abspath(self.mktemp())), "--log-format", "json"]
        with subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT
        ) as server:
            assert server.stdout is not None
            lines: list[bytes] = []
            try:
                for raw in server.stdout:
                    lines.append(raw)
                    event = json.loads(raw)
                    if "port" in event and event["log_namespace"].endswith("service"):
                        work(event["port"])
                        server.send_signal(signal.SIGTERM)
                        break
                rest, _ = server.communicate(timeout=60)
            finally:
                if server.returncode is None:
                    server.kill()
        lines.extend(rest.splitlines(keepends=True))
        self.assertEqual(server.returncode, 0, b"".join(lines))
        return [eventFromJSON(line.decode()) for line in lines]

    async def test_job_events_and_refusals_carry_caller_job_and_outcome(
        self,
    ) -> None:
        ids: list[str] = []

        def work(port: int) -> None:
            with grpc.secure_channel(
                f"localhost:{port}", channel_credentials("alice")
            ) as channel:
                stub = pb_grpc.JobWorkerStub(channel)
                started = stub.Start(pb.StartRequest(command=[b"true"]), timeout=30)
                ids.append(started.job.id)
                stub.Wait(pb.WaitRequest(job_id=started.job.id), timeout=30)
                with self.assertRaises(grpc.RpcError):
                    stub.Stop(
                        pb.StopRequest(job_id=started.job.id, grace_seconds=999999),
                        timeout=30,
                    )

        events = await deferToThread(self.serve, work)
        [job_id] = ids
        for event in events:
            self.assertIn(event["log_level"], list(LogLevel.iterconstants()))
            formatEvent(event)
        mine = [event for event in events if event.get("job_id") == job_id]
        self.assertEqual(
            [(event.get("caller"), event["owner"], event["outcome"]) for event in mine],
            [("alice", "alice", "started"), (None, "alice", "exited 0")],
        )
        refusals = [event for event in events if event.get("method") == "Stop"]
        self.assertEqual(len(refusals), 1, refusals)
        self.assertEqual(refusals[0]["caller"], "alice")
        self.assertEqual(refusals[0]["outcome"], "refused")
        self.assertEqual(refusals[0]["code"], "INVALID_ARGUMENT")
        self.assertIn("grace", refusals[0]["text"])
        stops = [event for event in events if "stop requested" in formatEvent(event)]
        self.assertEqual(stops, [])  # refused, so never logged as requested
