"""Tests for jobworker.server.api.convert: the hand-written OutputChunk encoding."""

from __future__ import annotations

# grpc-core reads its settings when grpc is first imported: ours go first.
import jobworker.server.api  # noqa: F401

# isort: split
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from jobworker.job.outputlog import Run
from jobworker.model import Stream
from jobworker.server.api.convert import encode_chunk
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
