"""The API server: the twistd plugin's options (`tap`), the Twisted service
around grpcio (`service`), the gRPC API itself (`api`), TLS material checks
(`tls`) and the state-directory lock (`statelock`).

Importing this package configures grpc-core (fork support off, TLS 1.2
suites restricted) before grpc itself is imported by any of its modules.
"""

from jobworker.server.tls import configure_grpc_environment

configure_grpc_environment()
