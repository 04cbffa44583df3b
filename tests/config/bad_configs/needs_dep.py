"""A stage module whose dependency is not installed."""

import nosuchdependency_xyz  # noqa: F401
