"""The systemd unit: sd_notify, readiness, and the unit's paths on a real twistd."""

from __future__ import annotations

# grpc-core reads its settings when grpc is first imported: ours go first.
import jobworker.server.api  # noqa: F401

# isort: split
import configparser
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from typing import Any, cast

import grpc
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.protocol import DatagramProtocol, ProcessProtocol
from twisted.internet.testing import MemoryReactor
from twisted.internet.threads import deferToThread
from twisted.logger import ILogObserver, LogEvent, LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest

from jobworker.server.notify import Readiness, sd_notify
from jobworker.server.service import GRPC_STOP_GRACE
from jobworker.server.tap import Options
from jobworker.v1 import jobworker_pb2 as pb
from jobworker.v1 import jobworker_pb2_grpc as pb_grpc
from tests.apiutil import channel_credentials, twistd_argv

reactor: Any = _reactor
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNIT = os.path.join(ROOT, "contrib", "systemd", "jobworker.service")
WAIT = 60  # seconds any one notification may take on a slow machine


def unit_service_section() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    with open(UNIT) as file:
        parser.read_string(file.read().replace("\\\n", " "))
    return parser["Service"]


def socket_path(test: unittest.TestCase) -> str:
    """A short path for a unix socket (AF_UNIX paths are), like systemd's
    /run/systemd/notify; removed after the test."""
    directory = tempfile.mkdtemp(prefix="jobworker-notify-")
    test.addCleanup(shutil.rmtree, directory, True)
    return os.path.join(directory, "notify")


class FakeNotifySocket(DatagramProtocol):
    """What systemd's notify socket receives, one message at a time."""

    def __init__(self) -> None:
        self.messages: DeferredQueue[dict[str, str]] = DeferredQueue()

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        fields = dict(
            line.split("=", 1) for line in datagram.decode().splitlines() if line
        )
        self.messages.put(fields)

    def next(self) -> Deferred[dict[str, str]]:
        message = self.messages.get()
        message.addTimeout(WAIT, reactor)
        return message


class SdNotifyTests(unittest.TestCase):
    def listen(self, address: str) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(address)
        sock.settimeout(10)
        self.addCleanup(sock.close)
        return sock

    def test_fields_go_to_the_socket_as_lines(self) -> None:
        path = socket_path(self)
        sock = self.listen(path)
        sent = sd_notify("READY=1", "STATUS=ok", environ={"NOTIFY_SOCKET": path})
        self.assertTrue(sent)
        self.assertEqual(sock.recv(4096), b"READY=1\nSTATUS=ok")

    def test_abstract_socket_and_reloading_stamp(self) -> None:
        name = f"jobworker-test-{os.getpid()}-{id(self)}"
        sock = self.listen("\0" + name)
        self.assertTrue(sd_notify("RELOADING=1", environ={"NOTIFY_SOCKET": "@" + name}))
        lines = sock.recv(4096).decode().splitlines()
        self.assertEqual(lines[0], "RELOADING=1")
        self.assertRegex(lines[1], r"\AMONOTONIC_USEC=[0-9]+\Z")

    def test_no_socket_sends_nothing_and_a_dead_one_is_a_warning(self) -> None:
        self.assertFalse(sd_notify("READY=1", environ={}))
        events: list[LogEvent] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        missing = socket_path(self)  # nothing listens there
        self.assertFalse(sd_notify("READY=1", environ={"NOTIFY_SOCKET": missing}))
        self.assertFalse(sd_notify("READY=1", environ={"NOTIFY_SOCKET": "vsock:2:9"}))
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 2)


class ReadinessTests(unittest.TestCase):
    def test_ready_once_running_with_status_and_stopping_at_stop(self) -> None:
        sent: list[tuple[str, ...]] = []
        fake = MemoryReactor()
        ready = Readiness(
            lambda: "serving", notify=lambda *f: sent.append(f), reactor=fake
        )
        ready.startService()
        self.assertEqual(sent, [])
        fake.run()
        self.assertEqual(sent, [("READY=1", "STATUS=serving")])
        ready.stopService()
        self.assertEqual(sent[1][0], "STOPPING=1")
        ready.stopService()
        self.assertEqual(len(sent), 2)


class UnitFileTests(unittest.TestCase):
    def test_unit_is_notify_reloads_with_sighup_and_stops_through_the_server(
        self,
    ) -> None:
        service = unit_service_section()
        self.assertEqual(service["Type"], "notify")
        self.assertEqual(service["ExecReload"], "/bin/kill -HUP $MAINPID")
        self.assertEqual(service["StateDirectory"], "jobworker")
        self.assertEqual(service["Delegate"], "yes")
        self.assertEqual(service["KillMode"], "mixed")
        timeout = float(service["TimeoutStopSec"].removesuffix("s"))
        self.assertGreater(timeout, Options()["stop-grace"] + GRPC_STOP_GRACE)
        start = shlex.split(service["ExecStart"])
        self.assertEqual(start[1:4], ["--nodaemon", "--pidfile=", "jobworker"])
        self.assertEqual(start[start.index("--state-dir") + 1], "${STATE_DIRECTORY}")

    def test_systemd_accepts_the_unit(self) -> None:
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise unittest.SkipTest("systemd-analyze is missing (make sysdeps)")
        # The unit names the installed twistd; verify it against ours.
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        copy = os.path.join(os.path.abspath(self.mktemp()), "jobworker.service")
        os.makedirs(os.path.dirname(copy))
        with open(UNIT) as source, open(copy, "w") as target:
            target.write(source.read().replace("/opt/jobworker/bin/twistd", twistd))
        result = subprocess.run(
            [analyze, "verify", copy], capture_output=True, timeout=120, check=False
        )
        self.assertEqual((result.returncode, result.stderr), (0, b""))


class ServerProcess(ProcessProtocol):
    """twistd jobworker as a child: its output and its end."""

    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[int | None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(getattr(reason.value, "exitCode", None))


class NotifyAndReloadTests(unittest.TestCase):
    """The unit's paths on a real server: readiness, ExecReload, stop."""

    async def test_ready_once_listening_reload_with_sighup_and_stopping(self) -> None:
        notify_path = socket_path(self)
        systemd = FakeNotifySocket()
        port = reactor.listenUNIXDatagram(notify_path, systemd)
        self.addCleanup(port.stopListening)
        argv = twistd_argv(os.path.abspath(self.mktemp()))
        server = ServerProcess()
        env = {"PATH": os.defpath, "NOTIFY_SOCKET": notify_path}
        transport = reactor.spawnProcess(server, argv[0], argv, env=env, path=ROOT)
        self.addCleanup(self.reap, transport, server)

        ready = await systemd.next()
        self.assertEqual(ready["READY"], "1", server.output)
        listening = re.search(r"\(port ([0-9]+)\)", ready["STATUS"])
        assert listening is not None, ready
        # READY=1 means the port answers calls now.
        channel = grpc.secure_channel(
            f"localhost:{listening.group(1)}", channel_credentials("alice")
        )
        self.addCleanup(channel.close)
        stub = pb_grpc.JobWorkerStub(channel)
        listed = await deferToThread(stub.List, pb.ListRequest(), timeout=WAIT)
        self.assertEqual(list(listed.jobs), [])

        reload = unit_service_section()["ExecReload"]
        command = shlex.split(reload.replace("$MAINPID", str(transport.pid)))
        result = await deferToThread(subprocess.run, command, timeout=WAIT, check=False)
        self.assertEqual(result.returncode, 0)
        reloading = await systemd.next()
        self.assertEqual(reloading["RELOADING"], "1")
        self.assertIn("MONOTONIC_USEC", reloading)
        self.assertEqual((await systemd.next())["READY"], "1")

        transport.signalProcess("TERM")
        self.assertEqual((await systemd.next())["STOPPING"], "1")
        self.assertEqual(await server.ended, 0, server.output)
        self.assertIn(b"certificates reloaded", server.output)
        self.assertNotIn(b"reload refused", server.output)

    def reap(
        self, transport: Any, server: ServerProcess
    ) -> Deferred[int | None] | None:
        if server.ended.called:
            return None
        transport.signalProcess(signal.SIGKILL)
        return server.ended
