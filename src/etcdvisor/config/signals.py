"""The one grammar of signal names (``stop_signal``, ``on_change: signal:NAME``),
shared by ``validate``, ``run`` and reload.

A signal is written by name, with or without the ``SIG`` prefix, in any case
(``TERM``, ``SIGTERM``, ``sigterm``); surrounding whitespace is ignored. Only the
signals that make sense to stop a child are accepted (:data:`STOP_SIGNALS`):
numbers are refused because they differ between platforms, and a signal such as
``STOP`` or ``CHLD`` would never end the child.
"""

from __future__ import annotations

import signal

STOP_SIGNALS: dict[str, signal.Signals] = {
    name: getattr(signal, "SIG" + name) for name in ("TERM", "INT", "HUP", "QUIT", "KILL", "USR1", "USR2")
}


def parse_signal(value: object, what: str = "known signal") -> signal.Signals:
    """Return the signal named by ``value``; ``ValueError`` with a one-line reason
    otherwise (``'X' is not a <what> (one of: ...)``)."""
    if isinstance(value, str) and value.isascii():  # "ſigterm".upper() == "SIGTERM"
        name = value.strip().upper()
        name = name[3:] if name.startswith("SIG") else name
        if name in STOP_SIGNALS:
            return STOP_SIGNALS[name]
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    raise ValueError(f"{shown} is not a {what} (one of: {', '.join(STOP_SIGNALS)}; "
                     "the SIG prefix is optional)")
