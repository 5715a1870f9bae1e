"""Parts of the supervisor that exist only once it has joined the cluster.

The session, the process manager, the roster... are made in ``start()``;
before that (or in a loop built by a test harness) they are absent. A
:class:`Joined` attribute reads as its plain type, so the loop code needs no
``None`` checks, and reading one that was never set raises
:class:`NotJoined` naming it instead of failing later on ``None``.
``present(obj, name)`` is for the few places (shutdown) that must cope with
a partial start.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar, overload

T = TypeVar("T")


class NotJoined(RuntimeError):
    pass


class Joined(Generic[T]):
    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type) -> Joined[T]: ...

    @overload
    def __get__(self, obj: object, owner: type) -> T: ...

    def __get__(self, obj: object | None, owner: type) -> Joined[T] | T:
        if obj is None:
            return self
        try:
            value: T = obj.__dict__[self.name]
        except KeyError:
            raise NotJoined(f"the supervisor has not joined yet: no {self.name}") from None
        return value

    def __set__(self, obj: object, value: T) -> None:
        obj.__dict__[self.name] = value


def present(obj: object, name: str) -> Any:
    """The part ``name`` of ``obj`` if it was made, else None."""
    return obj.__dict__.get(name)
