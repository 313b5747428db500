"""The server side every method shares: node discovery, the round loop, reply checks."""
