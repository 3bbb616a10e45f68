"""A real `twistd jobworker --live-restore` SIGKILLed or stopped while a job writes.

A job writes numbered lines without pause and a follower streams them;
the server is SIGKILLed (or SIGTERMed) and a new one started on the same
state directory. The job must be re-adopted (RUNNING), the follower's
reconnect from its last offset must give exactly the bytes the job wrote
(sha256 of the numbered lines), also those of the time no server ran;
stop works, the final status is right and nothing of the job is left.
"""

from __future__ import annotations

# grpc-core reads its settings when grpc is first imported: ours go first.
import jobworker.server.api  # noqa: F401

# isort: split
import hashlib
import os
import signal
import threading
from typing import Any

import grpc
from twisted.internet.threads import deferToThread

from jobworker.v1 import jobworker_pb2 as pb
from jobworker.v1 import jobworker_pb2_grpc as pb_grpc
from tests.apiutil import shell
from tests.procutil import marker, processes_with
from tests.test_restart_server import WAIT, ServerRestartCase, status, wait_until

# Ten lines at a time, then a short sleep; "end" and exit 5 on SIGTERM (the
# shell's "Terminated" for its sleep goes to stderr, here /dev/null).
SCRIPT = (
    "exec 2>/dev/null; trap 'echo end; exit 5' TERM; i=0;"
    " while :; do for j in 0 1 2 3 4 5 6 7 8 9; do echo $i; i=$((i+1)); done;"
    " sleep 0.001; done"
)


def numbered(data: bytes) -> bytes:
    """What the job wrote, if `data` ends where it did: 0..N, then "end"."""
    count = data.count(b"\n") - 1
    return b"".join(b"%d\n" % n for n in range(count)) + b"end\n"


class Follower:
    """Streams a job's output from an offset in a thread, until it breaks."""

    def __init__(self, stub: pb_grpc.JobWorkerStub, job_id: str, offset: int) -> None:
        self.data = b""
        self.offset = offset
        self.error: grpc.RpcError | None = None
        request = pb.StreamOutputRequest(job_id=job_id, offset=offset)
        self._call = stub.StreamOutput(request, timeout=WAIT)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for chunk in self._call:
                self.data += chunk.data
                self.offset = chunk.next_offset
        except grpc.RpcError as error:
            self.error = error


class LiveRestoredServerTests(ServerRestartCase):
    options = ("--live-restore",)

    def test_sigkilled_server_job_is_adopted_with_every_byte(self) -> Any:
        return deferToThread(self.scenario, signal.SIGKILL)

    def test_stopped_server_leaves_the_job_to_the_next(self) -> Any:
        return deferToThread(self.scenario, signal.SIGTERM)

    def scenario(self, sig: int) -> None:
        tag = marker()
        first = self.server()
        stub = first.stub()
        command = [*shell(SCRIPT), tag.encode()]
        job = stub.Start(pb.StartRequest(command=command), timeout=WAIT).job
        follower = Follower(stub, job.id, 0)
        wait_until(lambda: follower.data.count(b"\n") > 2000, "output followed")
        code = first.end(sig)
        if sig == signal.SIGTERM:
            self.assertEqual(code, 0, first.text)
            self.assertIn("leaving 1 jobs running for the next server", first.text)
        follower.thread.join(WAIT)
        self.assertIsNotNone(follower.error)
        self.assertNotEqual(processes_with(tag), [], "the job went with the server")
        read, offset = follower.data, follower.offset

        second = self.server()
        stub = second.stub()
        adopted = status(stub, job.id)
        self.assertEqual(adopted.state, pb.JOB_STATE_RUNNING, second.text)
        follower = Follower(stub, job.id, offset)
        wait_until(lambda: len(follower.data) > 10000, "output after the restart")
        final = stub.Stop(pb.StopRequest(job_id=job.id, grace_seconds=10)).job
        follower.thread.join(WAIT)
        self.assertIsNone(follower.error)
        read += follower.data

        self.assertEqual(
            hashlib.sha256(read).hexdigest(), hashlib.sha256(numbered(read)).hexdigest()
        )
        self.assertEqual(
            (final.state, final.exit_code, final.stop_requested),
            (pb.JOB_STATE_EXITED, 5, True),
        )
        self.assertEqual(final.output_bytes, len(read))
        again = Follower(stub, job.id, 0)
        again.thread.join(WAIT)
        self.assertEqual(again.data, read)
        self.assertEqual(processes_with(tag), [])
        job_dir = os.path.join(self.state_dir, "jobs", job.id)
        self.assertEqual(sorted(os.listdir(job_dir)), ["job.json", "output.log"])
        self.assertEqual(second.end(signal.SIGTERM), 0, second.text)
