"""The gRPC face of jobworker: authentication, admission, errors, the reactor
bridge and the `jobworker.v1.JobWorker` servicer.

grpc-core is configured by the enclosing `jobworker.server` package, which
Python imports before any module here.
"""
