"""Stages of the scale-out example: make orders, price them, say which worker did it."""

from __future__ import annotations

import os
import socket
from typing import Any

__all__ = ["order", "price"]

WORKER = f"{socket.gethostname()}-{os.getpid()}"
"""This process, as it appears in the merged output."""


def order(tick: dict[str, int]) -> dict[str, Any]:
    """Turn a `counter` tick into an order: an id, a quantity and a unit price.

    Example:
        >>> order({"n": 7})
        {'id': 'order-7', 'qty': 4, 'unit_price': 2.5}
    """
    n = tick["n"]
    return {"id": f"order-{n}", "qty": n % 4 + 1, "unit_price": 2.5}


def price(order: dict[str, Any]) -> dict[str, Any]:
    """Add the order's total and the worker that priced it.

    Example:
        >>> price({"id": "order-7", "qty": 3, "unit_price": 2.5})["total"]
        7.5
    """
    return {**order, "total": order["qty"] * order["unit_price"], "worker": WORKER}
