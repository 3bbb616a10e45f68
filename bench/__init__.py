"""`make bench`: jobworker's figures against baselines measured in the same run.

Run with `python -m bench` (see `bench.__main__`); it writes
`doc/performance.md`. Servers and clients always run in separate
processes: `bench.bare` is the bare grpcio baseline server, `bench.worker`
the client processes, `bench.servers` starts and stops both servers.
"""
