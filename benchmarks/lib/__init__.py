"""What the benchmarks share: the daemon as a process, callers and players, measurements,
reports and tables.  Each entry point (``python -m benchmarks.<name>``) answers one question."""
