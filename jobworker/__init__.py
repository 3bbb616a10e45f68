"""jobworker: run Linux processes for remote, authenticated clients.

The library (`jobworker.job.manager.JobManager`) starts, stops, queries and
streams the output of jobs; the API server (`jobworker.server.service`) exposes it
over gRPC with mutual TLS; the CLI (`jobworker.cli.main`) drives the server.
"""
