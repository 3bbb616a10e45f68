"""The `jobworker` command: `main` (the commands), `parser` (the command
line), `formatting` (how jobs are shown) and `client` (the mTLS gRPC
channel and one-line errors).
"""
