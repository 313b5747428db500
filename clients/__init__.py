"""Client-side handlers: one module per method, Message-API train/evaluate functions."""
