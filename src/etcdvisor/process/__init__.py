"""The process layer: spawn children, track one run, restart policy, output, safety nets.

Modules (each usable on its own):

- ``spawn``    -- ``ChildSpec`` and ``spawn()``: one child in its own process group with a
                  parent-death signal; ``SpawnError`` for a missing/unexecutable command.
- ``child``    -- ``ChildProcess``: the state machine of one run (stop, kill, poll).
- ``backoff``  -- pure restart-delay math with an injected random source.
- ``slot``     -- ``Slot``: one desired child with a restart policy and crash-loop limit.
- ``output``   -- ``OutputPump``: one thread forwards every child's output with a prefix.
- ``watchdog`` -- ``Watchdog``: a tiny helper process that kills children when the
                  supervisor is frozen or dead.
- ``reaper``   -- child-subreaper and reaping of orphans without stealing known statuses.
- ``manager``  -- ``ProcessManager``: wires the above for the decision loop.

This ``__init__`` imports nothing eagerly on purpose: ``python -m
etcdvisor.process.watchdog_main`` imports this package first and the watchdog helper
must stay small (no psutil, subprocess or threading). Names are resolved lazily.
"""

from importlib import import_module

_EXPORTS = {
    "ChildSpec": "spawn", "ChildVars": "spawn", "SpawnError": "spawn", "spawn": "spawn",
    "ChildProcess": "child", "ChildState": "child",
    "RestartBackoff": "backoff",
    "Slot": "slot", "SlotState": "slot", "RestartPolicy": "slot", "SlotEvent": "slot",
    "Started": "slot", "Exited": "slot", "Stopped": "slot", "Failed": "slot",
    "SpawnFailed": "slot",
    "OutputPump": "output",
    "Watchdog": "watchdog",
    "Reaper": "reaper", "become_subreaper": "reaper",
    "ProcessManager": "manager",
}

__all__ = tuple(sorted(_EXPORTS))


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{module}"), name)
