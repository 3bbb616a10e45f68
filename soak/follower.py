"""A follower in its own process, for the soak to SIGKILL mid-stream.

`python -m soak.follower TARGET PKI_DIR USER JOB_ID` follows the job's
output and prints one line per chunk received, so the parent can kill it
after a chosen number of chunks.
"""

from __future__ import annotations

import sys

from jobworker.v1 import jobworker_pb2 as pb
from soak.client import Clients


def main(argv: list[str]) -> int:
    target, pki_dir, user, job_id = argv
    clients = Clients(target, pki_dir)
    request = pb.StreamOutputRequest(job_id=job_id)
    print("open", flush=True)
    for chunk in clients.stub(user).StreamOutput(request, timeout=600):
        print("chunk", chunk.next_offset, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
