"""A stage module that fails on import."""

RATIO = 1 / 0
