"""What reloads did so far: counts by outcome, times, the last problems (SPEC §11).

`pipeline.server.reload.Reloader` records every attempt here; ``GET /pipelines`` shows
it as ``reload`` and ``GET /metrics`` as the ``pipeline_reload*`` families.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = ["RELOAD_OUTCOMES", "ReloadOutcome", "ReloadStatus"]

ReloadOutcome = Literal["applied", "rejected", "failed"]
RELOAD_OUTCOMES: tuple[ReloadOutcome, ...] = ("applied", "rejected", "failed")
"""How a reload ended: it applied; the new config did not validate; an unexpected error."""


@dataclass
class ReloadStatus:
    """The outcome of reloads so far (``/pipelines`` and ``/metrics`` read it).

    Attributes:
        applied: reloads that applied (a valid config, even when nothing changed).
        rejected: reloads refused because the new config did not validate.
        failed: reloads cut short by an unexpected exception (nothing new applied).
        last_attempt: UNIX time of the last reload tried (None before any).
        last_success: UNIX time of the last reload that applied.
        last_outcome: ``applied``, ``rejected`` or ``failed`` (None before any).
        problems: the problems of the last attempt, as ``FILE:LINE: path: message``.
        error: the exception of the last attempt, if it failed, as ``Type: message``.
        changed: what the last successful reload changed, by kind.
        restart_needed: ``server:`` settings changed in the config that only a restart
            applies (``server.port``, ...), as of the last successful reload.
    """

    applied: int = 0
    rejected: int = 0
    failed: int = 0
    last_attempt: float | None = None
    last_success: float | None = None
    last_outcome: ReloadOutcome | None = None
    problems: list[str] = field(default_factory=list)
    error: str | None = None
    changed: dict[str, list[str]] = field(default_factory=dict)
    restart_needed: list[str] = field(default_factory=list)

    def record(
        self,
        outcome: ReloadOutcome,
        *,
        problems: Iterable[str] = (),
        error: str | None = None,
        changed: Mapping[str, list[str]] | None = None,
        restart_needed: Iterable[str] = (),
    ) -> None:
        """Count the outcome of the attempt begun at ``last_attempt``.

        ``changed`` and ``restart_needed`` describe what runs, so only an applied reload
        replaces them.
        """
        setattr(self, outcome, getattr(self, outcome) + 1)
        self.last_outcome = outcome
        self.problems, self.error = list(problems), error
        if outcome == "applied":
            self.last_success = self.last_attempt
            self.changed = dict(changed or {})
            self.restart_needed = list(restart_needed)

    def as_json(self) -> dict[str, Any]:
        """The ``reload`` object of ``GET /pipelines``."""
        return {
            "applied": self.applied,
            "rejected": self.rejected,
            "failed": self.failed,
            "last_attempt": _rfc3339(self.last_attempt),
            "last_success": _rfc3339(self.last_success),
            "last_outcome": self.last_outcome,
            "problems": list(self.problems),
            "error": self.error,
            "changed": {k: list(v) for k, v in self.changed.items()},
            "restart_needed": list(self.restart_needed),
        }


def _rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
