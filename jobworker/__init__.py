"""jobworker: run Linux processes for remote, authenticated clients.

The library (`jobworker.manager.JobManager`) starts, stops, queries and
streams the output of jobs; the API server (`jobworker.server`) exposes it
over gRPC with mutual TLS; the CLI (`jobworker.cli`) drives the server.
"""
