"""The gRPC face of jobworker: authentication, errors, the reactor bridge, service.

Importing this package configures grpc-core (fork support off, TLS 1.2
suites restricted) before grpc itself is imported by any of its modules;
`jobworker.server` imports it first for that reason.
"""

from jobworker.tlsconfig import configure_grpc_environment

configure_grpc_environment()
