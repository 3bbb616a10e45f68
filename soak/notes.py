"""The fixed prose of the soak report: notes on the server and the fast tests."""

NOTES = [
    "## Notes",
    "",
    "- **Exit status on SIGTERM.** twistd ends itself with the signal that",
    "  stopped it once the shutdown is complete; `jobworker.tap` forgets the",
    "  signal after a complete shutdown, so the server exits 0 and the soak",
    "  requires exactly that (and `Server Shut Down.` in its log).",
    "- **Job records and logs are kept.** Every ended job's status stays in",
    "  the server's memory and its output log on disk until the server stops",
    "  (RSS above grows with the job count); after a crash the restarted",
    "  server removes the stale cgroups but not the old job directories.",
    "",
]

# What `make test` runs of the reliability suite (soak/ runs the rest).
TESTS = [
    "## 5 and 6. Hostile input and races (in `make test`)",
    "",
    "`tests/test_hostile_input.py`: hypothesis (derandomized, 80 examples per",
    "property) drives Start, Stop, Status, StreamOutput and List with raw",
    "request bytes over real mTLS: random and 128 KiB-boundary arguments, NUL",
    "bytes, invalid UTF-8 in ids, NaN/infinite/negative/huge limits and graces,",
    "uint64-max offsets, random and near-miss ids, messages over grpc's 4 MiB;",
    "never INTERNAL/UNKNOWN/UNAVAILABLE, the server keeps serving, and another",
    "user's running job is never seen, stopped or changed; List pages reach",
    "every job however large the commands; one user's waiting calls cannot",
    "lock out another. 201 TCP connections that never finish the TLS handshake",
    "(silent, half a ClientHello, or garbage) do not stop other clients.",
    "",
    "`tests/test_races.py`: rounds of jobs started together and then stopped,",
    "polled and followed from about 36 threads at once (over 6,000 calls):",
    "every Stop answer and every later Status is the same final status, states",
    "only move forward, every follower (and a late one) gets the same bytes,",
    "none reaches its deadline; Stop racing Start 40 times never loses a job;",
    "and a shutdown is not held up by a user's earlier Stop with a long grace.",
    "",
]
