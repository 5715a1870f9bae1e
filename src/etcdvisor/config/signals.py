"""The one signal parser of the configuration (``stop_signal``, ``on_change: signal:NAME``)."""

from __future__ import annotations

import signal

STOP_SIGNALS = {name: getattr(signal, "SIG" + name) for name in ("TERM", "INT", "HUP", "QUIT", "KILL", "USR1", "USR2")}
"""The signals a config may name, without the ``SIG`` prefix."""


def parse_signal(text: str) -> signal.Signals:
    """``TERM``, ``SIGTERM``, ``hup``... -> the signal; ValueError naming the
    accepted names otherwise."""
    name = str(text).strip().upper()
    name = name.removeprefix("SIG")
    if name not in STOP_SIGNALS:
        raise ValueError(f"{text!r} is not a known signal (one of: {', '.join(STOP_SIGNALS)})")
    return STOP_SIGNALS[name]
