"""Stages for the fault tests: a sink that takes some chunks, then holds the rest un-accepted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import orjson

from pipeline import Delivery, sink


@sink(stream=True, confirm=True, receives="data")
async def hold(deliveries: AsyncIterator[Delivery], *, seen: str, accept: int = 0) -> None:
    """Append each data to ``seen`` and accept it; after ``accept`` items, hold the rest."""
    count = 0
    with Path(seen).open("ab") as fh:  # noqa: ASYNC230 - a test gate, tiny writes
        async for d in deliveries:
            fh.write(orjson.dumps(d.item) + b"\n")
            fh.flush()
            count += 1
            if count > accept:
                await asyncio.Event().wait()  # never accepts: the worker gets killed here
            d.accept()
