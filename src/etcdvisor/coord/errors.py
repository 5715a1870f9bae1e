"""The small exception hierarchy every backend raises.

The etcd backend translates client and gRPC errors into these at its
boundary; nothing above ``coord`` ever sees an ``etcd3`` or ``grpc``
exception.
"""


class CoordError(Exception):
    """Base class of every coordination error."""


class InvalidURL(CoordError, ValueError):
    """A backend URL or connection option could not be understood."""


class Unavailable(CoordError):
    """The backend could not be reached (connection refused, no leader...)."""


class CoordTimeout(Unavailable):
    """A call did not complete within its timeout."""


class AuthFailed(CoordError):
    """Credentials were rejected, or the user lacks permission."""


class PermissionDenied(AuthFailed):
    """The credentials are valid but the user may not touch this key (etcd's
    PERMISSION_DENIED); the message names the operation and the key."""


class Compacted(CoordError):
    """A watch or read asked for a revision that was compacted away."""

    def __init__(self, compact_revision: int):
        super().__init__(f"revision compacted (compact revision {compact_revision})")
        self.compact_revision = compact_revision


class LeaseNotFound(CoordError):
    """The lease does not exist (expired or revoked)."""


class Closed(CoordError):
    """The backend handle, or the watch, was closed."""
