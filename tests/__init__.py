"""jobworker's trial suite.

grpc reads GRPC_SSL_CIPHER_SUITES and GRPC_ENABLE_FORK_SUPPORT once, when it
is first imported: importing jobworker.server.api here sets them before any test
module can import grpc.
"""

import jobworker.server.api  # noqa: F401
