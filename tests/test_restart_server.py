"""A real `twistd jobworker` SIGKILLed, or stopped, and started again.

The server runs as a subprocess on one state directory (with cgroups and
namespaces when root); the jobs of the killed run must come back from the
journal with the truth: finished ones exact, with their output, running
ones LOST, and jobs stopped by a graceful stop KILLED; a retried Start
(same caller, same request id) gets its job of the earlier run.
"""

from __future__ import annotations

# grpc-core reads its settings when grpc is first imported: ours go first.
import jobworker.server.api  # noqa: F401

# isort: split
import os
import queue
import re
import signal
import subprocess
import threading
import time
from typing import Any

import grpc
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from jobworker.v1 import jobworker_pb2 as pb
from jobworker.v1 import jobworker_pb2_grpc as pb_grpc
from tests.apiutil import channel_credentials, shell, twistd_argv
from tests.cliutil import remove_parent_cgroups
from tests.procutil import marker, processes_with

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT = 60.0
LISTENING = re.compile(r"API listening on .* \(port ([0-9]+)\)")


class Twistd:
    """A `twistd jobworker` subprocess, its log collected as it runs."""

    def __init__(
        self, state_dir: str, *, isolated: bool, options: tuple[str, ...] = ()
    ) -> None:
        argv = [*twistd_argv(state_dir, isolated=isolated), *options]
        self.process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT
        )
        self.log: list[str] = []
        self._ports: queue.Queue[int] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.channels: list[grpc.Channel] = []

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode(errors="replace")
            self.log.append(line)
            listening = LISTENING.search(line)
            if listening:
                self._ports.put(int(listening.group(1)))

    def stub(self, user: str = "alice") -> pb_grpc.JobWorkerStub:
        try:
            port = self._ports.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError(f"the server never listened: {self.text}") from None
        self._ports.put(port)
        channel = grpc.secure_channel(f"localhost:{port}", channel_credentials(user))
        self.channels.append(channel)
        return pb_grpc.JobWorkerStub(channel)

    @property
    def text(self) -> str:
        return "".join(self.log)

    def end(self, sig: int) -> int:
        """Send `sig` and wait for the server to exit; its exit status."""
        for channel in self.channels:
            channel.close()
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=WAIT)
        self._reader.join(timeout=WAIT)
        return code


def wait_until(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


def output(stub: pb_grpc.JobWorkerStub, job_id: str) -> bytes:
    request = pb.StreamOutputRequest(job_id=job_id)
    return b"".join(chunk.data for chunk in stub.StreamOutput(request, timeout=WAIT))


def status(stub: pb_grpc.JobWorkerStub, job_id: str) -> pb.JobStatus:
    request = pb.StatusRequest(job_id=job_id)
    job: pb.JobStatus = stub.Status(request, timeout=WAIT).job
    return job


class ServerRestartCase(unittest.TestCase):
    """Servers (`server()`) on one state directory, SIGKILLed at the end."""

    options: tuple[str, ...] = ()
    """The servers' options beyond `twistd_argv`'s."""

    def setUp(self) -> None:
        self.state_dir = os.path.abspath(self.mktemp())
        self.isolated = os.geteuid() == 0
        if self.isolated:
            self.addCleanup(remove_parent_cgroups, self.state_dir)
        self.servers: list[Twistd] = []
        self.addCleanup(self.kill_servers)

    def server(self) -> Twistd:
        server = Twistd(self.state_dir, isolated=self.isolated, options=self.options)
        self.servers.append(server)
        return server

    def kill_servers(self) -> None:
        for server in self.servers:
            server.end(signal.SIGKILL)


class RestartedServerTests(ServerRestartCase):
    def test_jobs_of_a_sigkilled_server_come_back_with_the_truth(self) -> Any:
        return deferToThread(self.sigkill_scenario)

    def sigkill_scenario(self) -> None:
        first = self.server()
        stub = first.stub()
        done = stub.Start(
            pb.StartRequest(command=shell("echo done; exit 3")), timeout=WAIT
        ).job
        ended = stub.Wait(pb.WaitRequest(job_id=done.id), timeout=WAIT).job
        tag = marker()
        retried = pb.StartRequest(
            command=shell(f"echo started; sleep {tag}"), request_id="r-1"
        )
        running = stub.Start(retried, timeout=WAIT).job
        wait_until(lambda: status(stub, running.id).output_bytes > 0, "output")
        first.end(signal.SIGKILL)
        wait_until(lambda: not processes_with(tag), "the job died with the server")

        second = self.server()
        stub = second.stub()
        self.assertEqual(status(stub, done.id), ended)
        self.assertEqual(output(stub, done.id), b"done\n")
        lost = status(stub, running.id)
        self.assertEqual(lost.state, pb.JOB_STATE_LOST, second.text)
        self.assertFalse(lost.HasField("exit_code") or lost.HasField("signal"))
        self.assertFalse(lost.stop_requested)
        self.assertTrue(lost.HasField("ended_at"))
        self.assertEqual(lost.output_bytes, len(b"started\n"))
        self.assertEqual(output(stub, running.id), b"started\n")
        listed = stub.List(pb.ListRequest(), timeout=WAIT).jobs
        self.assertEqual([job.id for job in listed], [done.id, running.id])
        self.assertIn("restored 2 job(s) of an earlier run, 1 lost", second.text)
        # A retry of the Start the crash cut off gets its job, not a new one.
        self.assertEqual(stub.Start(retried, timeout=WAIT).job, lost)
        self.assertEqual(lost.request_id, "r-1")
        bobs = second.stub("bob").Start(retried, timeout=WAIT).job
        self.assertNotEqual(bobs.id, running.id)
        self.assertEqual(second.end(signal.SIGTERM), 0, second.text)

    def test_jobs_stopped_by_a_graceful_stop_come_back_killed(self) -> Any:
        return deferToThread(self.sigterm_scenario)

    def sigterm_scenario(self) -> None:
        first = self.server()
        stub = first.stub()
        tag = marker()
        job = stub.Start(pb.StartRequest(command=[b"sleep", tag.encode()])).job
        self.assertEqual(first.end(signal.SIGTERM), 0, first.text)
        self.assertEqual(processes_with(tag), [])

        final = status(self.server().stub(), job.id)
        self.assertEqual(
            (final.state, final.signal, final.stop_requested),
            (pb.JOB_STATE_KILLED, signal.SIGTERM, True),
        )
