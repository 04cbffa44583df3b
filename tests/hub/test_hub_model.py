"""The hub against a model of retention: random publish/subscribe/read/resume sequences.

Every reader's stream is checked two ways: exactly against the model (what is ready,
when it ends, when it is dropped), and against the contract alone: seqs of one client,
across reconnects with its last ``RUN:SEQ``, have no gap and no duplicate except where a
``lagged`` notice says exactly how many were missed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson
from hypothesis import HealthCheck, event, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pipeline.envelope import encode
from pipeline.hub.hub import Hub, Subscription


@dataclass
class MRun:
    """A run in the model."""

    id: str
    start: int
    end: int | None = None
    last_seq: int = 0


@dataclass
class Client:
    """One client: its open subscription (if any) and what it has seen."""

    sub: Subscription | None = None
    run: MRun | None = None
    cursor: int = 0
    replay_end: int = 0
    notice: int | None = None
    ended: bool = False
    last: tuple[str, int] | None = None
    continuous: bool = False
    missed: int = 0
    received: list[tuple[str, int]] = field(default_factory=list)


class HubModel(RuleBasedStateMachine):
    """Drive one hub and a model of it side by side."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clients: list[Client] = []
        self.log: list[tuple[str, int]] = []  # (run, seq) at every position
        self.run: MRun | None = None
        self.closed = False
        self.runs = 0

    def teardown(self) -> None:
        for c in self.clients:
            if c.sub is not None:
                c.sub.close()
        self.loop.close()

    @initialize(retain=st.integers(0, 6), client_buffer=st.integers(1, 6))
    def make(self, retain: int, client_buffer: int) -> None:
        self.hub = Hub("m", retain=retain, client_buffer=client_buffer)
        self.retain, self.cb = retain, client_buffer

    # -- producer ---------------------------------------------------------------------

    def _publish(self, status: str) -> None:
        assert self.run is not None
        self.run.last_seq += 1
        env = {"status": status, "pipeline": "m", "run": self.run.id, "seq": self.run.last_seq}
        self.hub.publish(env, encode(env))
        self.log.append((self.run.id, self.run.last_seq))

    @precondition(lambda self: not self.closed and (self.run is None or self.run.end is not None))
    @rule()
    def begin_run(self) -> None:
        self.runs += 1
        self.run = MRun(f"r{self.runs}", len(self.log))
        self.hub.begin_run(self.run.id)
        for c in self.clients:
            if c.sub is not None and c.run is None:
                c.run, c.cursor = self.run, self.run.start

    @precondition(lambda self: self.run is not None and self.run.end is None)
    @rule(n=st.integers(1, 4))
    def publish(self, n: int) -> None:
        for _ in range(n):
            self._publish("processing")

    @precondition(lambda self: self.run is not None and self.run.end is None)
    @rule()
    def finish_run(self) -> None:
        assert self.run is not None
        self._publish("complete")
        self.hub.end_run()
        self.run.end = len(self.log)

    @precondition(lambda self: not self.closed)
    @rule(dice=st.integers(0, 7))
    def close_hub(self, dice: int) -> None:
        if dice:  # shutdown is rare: most sequences should keep the hub open
            return
        self.hub.close()
        self.closed = True

    # -- clients ----------------------------------------------------------------------

    @rule(kind=st.sampled_from(["live", "zero", "seq", "token", "other"]), k=st.integers(0, 30))
    def connect(self, kind: str, k: int) -> None:
        c = Client()
        self.clients.append(c)
        if kind == "token" and self.run is not None:
            k = min(k, self.run.last_seq)
            c.last = (self.run.id, k)
            self._subscribe(c, f"{self.run.id}:{k}", continuous=True)
            return
        since = {"live": None, "zero": "0", "seq": str(k), "token": "0", "other": "gone:5"}[kind]
        self._subscribe(c, since, continuous=kind in ("zero", "token", "other"))

    @rule(data=st.data())
    def reconnect(self, data: st.DataObject) -> None:
        if not self.clients:
            return
        c = data.draw(st.sampled_from(self.clients))
        if c.sub is not None:
            c.sub.close()
        since = "0" if c.last is None else f"{c.last[0]}:{c.last[1]}"
        self._subscribe(c, since, continuous=True)

    @rule(data=st.data())
    def disconnect(self, data: st.DataObject) -> None:
        open_ = [c for c in self.clients if c.sub is not None]
        if open_:
            c = data.draw(st.sampled_from(open_))
            assert c.sub is not None
            c.sub.close()
            c.sub = None

    def _subscribe(self, c: Client, since: str | None, *, continuous: bool) -> None:
        c.sub = self.hub.subscribe(since)
        c.ended, c.notice, c.missed = False, None, 0
        c.continuous = continuous
        head = len(self.log)
        c.run, c.cursor, c.replay_end = self.run, head, head
        if self.run is None:
            return
        run = self.run
        oldest = max(run.start, head - self.retain)
        if since is None:
            c.cursor = head if run.end is None else oldest
            return
        token_run, _, seq = since.rpartition(":")
        changed = bool(token_run) and token_run != run.id
        first = 1 if changed else int(seq) + 1
        oldest_seq = self.log[oldest][1] if oldest < head else run.last_seq + 1
        if first < oldest_seq or changed:  # a run change is always announced
            c.cursor, c.notice = oldest, max(oldest_seq - first, 0)
        else:
            c.cursor = next((p for p in range(oldest, head) if self.log[p][1] >= first), head)

    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        open_ = [c for c in self.clients if c.sub is not None and not c.ended]
        if not open_:
            return
        c = data.draw(st.sampled_from(open_))
        assert c.sub is not None
        head, run = len(self.log), c.run
        lapped = (
            run is not None and c.cursor != run.end and head - max(c.cursor, c.replay_end) > self.cb
        )
        stop = c.cursor if run is None else (head if run.end is None else run.end)
        if lapped:
            event("read: dropped")
            self._expect_end(c)
            assert c.sub.dropped
        elif stop > c.cursor or c.notice is not None:
            event("read: lagged notice" if c.notice is not None else "read: batch")
            batch = self.loop.run_until_complete(asyncio.wait_for(c.sub.__anext__(), 5))
            self._check(c, batch, stop)
        elif self.closed or (run is not None and c.cursor == run.end):
            event("read: end")
            self._expect_end(c)
            assert not c.sub.dropped
        else:
            event("read: nothing ready")
            self._expect_nothing(c.sub)

    @rule(data=st.data())
    def read_more(self, data: st.DataObject) -> None:
        """Reading is the most common step (a second rule doubles its weight)."""
        self.read(data)

    def _expect_end(self, c: Client) -> None:
        assert c.sub is not None
        try:
            self.loop.run_until_complete(asyncio.wait_for(c.sub.__anext__(), 5))
        except StopAsyncIteration:
            c.ended = True
        else:
            raise AssertionError("the stream should have ended")

    def _expect_nothing(self, sub: Subscription) -> None:
        task = self.loop.create_task(sub.__anext__())
        self.loop.run_until_complete(asyncio.sleep(0))
        assert not task.done()
        task.cancel()
        self.loop.run_until_complete(asyncio.wait([task]))

    def _check(self, c: Client, batch: bytes, stop: int) -> None:
        envs: list[dict[str, Any]] = [orjson.loads(line) for line in batch.splitlines()]
        if c.notice is not None:
            notice = envs.pop(0)
            assert notice["status"] == "lagged"
            assert c.run is not None
            assert (notice["missed"], notice["run"], notice["pipeline"]) == (
                c.notice,
                c.run.id,
                "m",
            )
            c.missed, c.notice = notice["missed"], None
        got = [(e["run"], e["seq"]) for e in envs]
        assert got == self.log[c.cursor : stop]
        c.cursor = stop
        for run_id, seq in got:
            if c.continuous:
                same = c.last is not None and c.last[0] == run_id
                expected = (c.last[1] if same and c.last else 0) + 1 + c.missed
                assert seq == expected, (c.last, c.missed, run_id, seq)
            c.continuous, c.missed, c.last = True, 0, (run_id, seq)
            c.received.append((run_id, seq))

    @invariant()
    def memory_is_bounded(self) -> None:
        if hasattr(self, "hub"):
            assert self.hub.buffered <= self.retain + self.cb
            assert self.hub.clients <= sum(c.sub is not None and not c.ended for c in self.clients)


HubModel.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestHubModel = HubModel.TestCase
