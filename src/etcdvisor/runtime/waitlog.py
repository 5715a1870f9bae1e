"""Every wait longer than a second gets a log line when it begins and one when it ends.

``status`` explains waits (a fenced hand-off waiting for another member's child, a role
held by ``after``/``wait_for`` barriers, a start waiting for a keepalive to confirm the
lease); the loop feeds the same descriptions here every turn, and this pure tracker
turns their changes into lines, without ever blocking::

    role worker: 1/2 waits for vm-3's child (1/2) (1.0s so far)
    role worker: done waiting after 8.3s: 1/2 waits for vm-3's child (1/2)

A wait shorter than ``THRESHOLD`` logs nothing. The loop wakes up at
:meth:`next_deadline` so the first line comes on time even with nothing else
happening.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

log = logging.getLogger("etcdvisor")

THRESHOLD = 1.0  # seconds a wait lasts before it is logged


class WaitLog:
    def __init__(self, threshold: float = THRESHOLD):
        self.threshold = threshold
        self.began: dict[tuple[str, str], float] = {}  # (role, what) -> since
        self.said: set[tuple[str, str]] = set()  # waits whose first line was logged

    def update(self, waits: Iterable[tuple[str, str]], now: float) -> None:
        """``waits``: (role, what it waits for) of every wait in progress now."""
        current = set(waits)
        for wait in [w for w in self.began if w not in current]:
            since = self.began.pop(wait)
            if wait in self.said:
                self.said.discard(wait)
                log.info("role %s: done waiting after %.1fs: %s", wait[0], now - since, wait[1],
                         extra={"role": wait[0]})
        for wait in current:
            since = self.began.setdefault(wait, now)
            if wait not in self.said and now - since >= self.threshold:
                self.said.add(wait)
                log.info("role %s: %s (%.1fs so far)", wait[0], wait[1], now - since, extra={"role": wait[0]})

    def next_deadline(self) -> float | None:
        due = [since + self.threshold for wait, since in self.began.items() if wait not in self.said]
        return min(due) if due else None
