"""Bound the end of a process whatever its stages do.

A ``blocking: true`` stage stuck in its thread, or a sync stage spinning on the event
loop, must not keep the process alive after SIGTERM. Three pieces:

- `install_executor`: the loop's default executor does not wait for its threads when
  the loop closes (``asyncio.run`` would otherwise wait for a stuck thread forever);
- `arm`: a daemon timer started by the first signal; if the process is still alive
  ``seconds`` later (the event loop was held, a cleanup hung) it exits at once;
- `run`: ``asyncio.run``, except that the tasks left at the end (a stage that swallows
  cancellation) get `_EXIT_JOIN` seconds to end instead of forever;
- `stuck_threads`: the threads still running at the end, which would make the
  interpreter wait at exit (the caller then leaves with ``os._exit``);
- `leave`: after a shutdown signal, exit without tearing the interpreter down (that
  alone took 0.3-0.7 s here, seconds on a loaded machine): exit handlers run, streams
  are flushed, then ``os._exit``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["arm", "install_executor", "leave", "run", "signalled", "stuck_threads"]

_T = TypeVar("_T")

_EXIT_JOIN = 0.2
"""Seconds the threads still running at the end get to finish before they are left."""
_TASKS_JOIN = 0.1
"""Seconds the tasks still running at the end get to take their cancellation."""


class _Executor(ThreadPoolExecutor):
    """A thread pool whose shutdown never waits (its threads may be stuck in a stage)."""

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait=False, cancel_futures=True)


def install_executor(loop: asyncio.AbstractEventLoop) -> None:
    """Make ``loop``'s default executor one that does not wait for stuck threads."""
    loop.set_default_executor(_Executor(thread_name_prefix="pipeline-blocking"))


_armed: list[threading.Timer] = []


def signalled() -> bool:
    """Whether a shutdown signal armed the deadline (`arm`) in this process."""
    return bool(_armed)


def leave(code: int) -> None:
    """Exit now with ``code``: run the exit handlers, flush stdout and stderr, skip the
    interpreter's teardown and any thread still running."""
    with contextlib.suppress(Exception):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a broken stream must not stop the exit
            stream.flush()
    os._exit(code)


def arm(seconds: float, code: int = 1) -> threading.Timer:
    """Exit the process with ``code`` in ``seconds`` unless it has ended by then."""

    def fire() -> None:
        os.write(2, b'{"event":"shutdown_deadline","level":"error","seconds":%.3f}\n' % seconds)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a broken stream must not stop the exit
                stream.flush()
        os._exit(code)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    _armed.append(timer)
    return timer


def stuck_threads() -> list[str]:
    """Names of the non-daemon threads still running after `_EXIT_JOIN` seconds."""
    deadline = time.monotonic() + _EXIT_JOIN
    main = threading.main_thread()
    left = []
    for t in threading.enumerate():
        if t is main or t.daemon:
            continue
        t.join(max(deadline - time.monotonic(), 0.0))
        if t.is_alive():
            left.append(t.name)
    return left


def run(
    main: Coroutine[Any, Any, _T],
    *,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> _T:
    """Run ``main`` on a new loop like ``asyncio.run``, with a bounded clean-up."""
    loop = (loop_factory or asyncio.new_event_loop)()
    install_executor(loop)
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main)
    finally:
        try:
            left = asyncio.all_tasks(loop)
            for task in left:
                task.cancel()
            if left:
                loop.run_until_complete(asyncio.wait(left, timeout=_TASKS_JOIN))
            if not any(not t.done() for t in left):  # else their generators are running
                loop.run_until_complete(_bounded(loop.shutdown_asyncgens()))
            loop.run_until_complete(_bounded(loop.shutdown_default_executor()))
        finally:
            asyncio.set_event_loop(None)
            loop.close()


async def _bounded(cleanup: Coroutine[Any, Any, None]) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(cleanup, _EXIT_JOIN)
