"""`make soak`: load, disconnects and faults against a real jobworker server."""
