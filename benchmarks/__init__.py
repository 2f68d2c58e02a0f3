"""Benchmarks: fastapi-channels against the limit of the stack, measured side by side."""
