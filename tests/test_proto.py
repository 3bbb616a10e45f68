"""The committed gRPC code matches proto/: `make proto` was run after each edit."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial import unittest

ROOT = Path(__file__).resolve().parent.parent
GENERATED = (
    "jobworker_pb2.py",
    "jobworker_pb2.pyi",
    "jobworker_pb2_grpc.py",
    "jobworker_pb2_grpc.pyi",
)


class GeneratedCodeTests(unittest.TestCase):
    def test_generated_code_is_fresh(self) -> None:
        """Regenerating from the .proto gives byte-identical files."""
        with tempfile.TemporaryDirectory() as out:
            bindir = os.path.dirname(sys.executable)
            env = dict(os.environ, PATH=bindir + os.pathsep + os.environ["PATH"])
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "grpc_tools.protoc",
                    f"-I{ROOT / 'proto'}",
                    f"--python_out={out}",
                    f"--grpc_python_out={out}",
                    f"--mypy_out={out}",
                    f"--mypy_grpc_out={out}",
                    str(ROOT / "proto/jobworker/v1/jobworker.proto"),
                ],
                check=True,
                env=env,
                capture_output=True,
            )
            for name in GENERATED:
                fresh = (Path(out) / "jobworker/v1" / name).read_bytes()
                committed = (ROOT / "jobworker/v1" / name).read_bytes()
                self.assertEqual(
                    fresh, committed, f"jobworker/v1/{name} is stale: run make proto"
                )
