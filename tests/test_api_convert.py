"""Tests for jobworker.server.api.convert: the hand-written OutputChunk encoding."""

from __future__ import annotations

# grpc-core reads its settings when grpc is first imported: ours go first.
import jobworker.server.api  # noqa: F401

# isort: split
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from jobworker.job.outputlog import Run
from jobworker.model import JobState, JobStatus, Limits, Stream, Usage
from jobworker.server.api.convert import (
    SHARED_COMMAND_BYTES,
    encode_chunk,
    status_reply,
    status_to_pb,
)
from jobworker.v1 import jobworker_pb2 as pb

offsets = st.integers(min_value=0, max_value=2**64 - 1)


class EncodeChunkTests(unittest.TestCase):
    @given(
        st.sampled_from(Stream),
        offsets,
        offsets,
        st.lists(st.binary(max_size=300), max_size=4),
    )
    def test_same_bytes_as_protobuf(
        self, stream: Stream, offset: int, next_offset: int, pieces: list[bytes]
    ) -> None:
        run = Run(stream, offset, next_offset, [memoryview(p) for p in pieces])
        expected = pb.OutputChunk(
            stream=int(stream),  # type: ignore[arg-type]
            offset=offset,
            next_offset=next_offset,
            data=b"".join(pieces),
        ).SerializeToString(deterministic=True)
        self.assertEqual(encode_chunk(run), expected)

    @given(
        st.sampled_from(Stream),
        offsets,
        st.binary(max_size=300),
        st.integers(min_value=0, max_value=253_402_300_799 * 10**9),
    )
    def test_same_bytes_as_protobuf_with_a_time(
        self, stream: Stream, offset: int, data: bytes, time_ns: int
    ) -> None:
        run = Run(stream, offset // 2, offset // 2 + 1, [memoryview(data)], time_ns)
        expected = pb.OutputChunk(
            stream=int(stream),  # type: ignore[arg-type]
            offset=offset // 2,
            next_offset=offset // 2 + 1,
            data=data,
        )
        expected.time.FromNanoseconds(time_ns)
        self.assertEqual(
            encode_chunk(run), expected.SerializeToString(deterministic=True)
        )
        self.assertEqual(pb.OutputChunk.FromString(encode_chunk(run)), expected)

    def test_a_large_chunk_parses_back(self) -> None:
        data = bytes(range(256)) * 4096  # 1 MiB: a three-byte length
        run = Run(
            Stream.STDERR, 5, 1 << 40, [memoryview(data[:7]), memoryview(data[7:])]
        )
        message = pb.OutputChunk.FromString(encode_chunk(run))
        self.assertEqual(
            (message.stream, message.offset, message.next_offset, message.data),
            (pb.STREAM_STDERR, 5, 1 << 40, data),
        )


class StatusToPbTests(unittest.TestCase):
    def status(self, usage: Usage) -> JobStatus:
        return JobStatus(
            "id", "alice", (b"true",), JobState.RUNNING, Limits(), 1.0, usage=usage
        )

    def test_known_usage_is_set_and_unknown_left_unset(self) -> None:
        usage = Usage(cpu_seconds=1.5, memory_peak_bytes=4096, io_read_bytes=0)
        message = status_to_pb(self.status(usage)).usage
        self.assertEqual(message.cpu_seconds, 1.5)
        self.assertEqual(message.memory_peak_bytes, 4096)
        self.assertTrue(message.HasField("io_read_bytes"))  # 0 is known
        self.assertFalse(message.HasField("io_write_bytes"))
        self.assertFalse(message.HasField("pids_peak"))

    def test_no_usage_is_no_field(self) -> None:
        self.assertFalse(status_to_pb(self.status(Usage())).HasField("usage"))


class StatusReplyTests(unittest.TestCase):
    def status(
        self,
        state: JobState = JobState.EXITED,
        exit_code: int | None = 3,
        command: tuple[bytes, ...] = (b"true",),
    ) -> JobStatus:
        return JobStatus(
            "id", "alice", command, state, Limits(), 1.0, exit_code=exit_code
        )

    def test_reply_shows_the_status(self) -> None:
        status = self.status()
        self.assertEqual(
            status_reply(status), pb.StatusResponse(job=status_to_pb(status))
        )

    def test_same_status_shares_one_reply(self) -> None:
        status = self.status()
        self.assertIs(status_reply(status), status_reply(status))

    def test_changed_status_gets_a_new_reply(self) -> None:
        before = status_reply(self.status(state=JobState.RUNNING, exit_code=None))
        after = status_reply(self.status())
        self.assertEqual(before.job.state, pb.JOB_STATE_RUNNING)
        self.assertEqual(after.job.state, pb.JOB_STATE_EXITED)
        self.assertEqual(after.job.exit_code, 3)

    def test_long_command_reply_is_built_each_time(self) -> None:
        status = self.status(command=(b"echo", b"x" * SHARED_COMMAND_BYTES))
        first, again = status_reply(status), status_reply(status)
        self.assertIsNot(first, again)
        self.assertEqual(first, pb.StatusResponse(job=status_to_pb(status)))
        self.assertEqual(again, first)
