"""A one-slot, latest-wins mailbox with its own dispatcher thread.

Producers (watch threads) never block; the consumer callback sees values in
the order they were put, with intermediate values dropped when it is slower
than the producers (coalesced, never reordered).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)
_EMPTY = object()


class LatestMailbox(Generic[T]):
    def __init__(self, handler: Callable[[T], None], *, name: str = "mailbox"):
        self._handler = handler
        self._cond = threading.Condition()
        self._value = _EMPTY
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"dispatch:{name}", daemon=True)
        self._thread.start()

    def put(self, value: T) -> None:
        with self._cond:
            self._value = value
            self._cond.notify()

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is pending, then stop the dispatcher."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._value is not _EMPTY or self._closed)
                value, self._value = self._value, _EMPTY
                if value is _EMPTY and self._closed:
                    return
            try:
                self._handler(value)
            except Exception:
                log.exception("mailbox handler failed")
