"""One error hierarchy for the whole package.

Every failure that can reach a user is a `RafsError` of one kind. Each kind carries the
exit code the command line returns for it and the errno a FUSE mount answers with, so the
outer layers never guess. Messages are one line naming the input and what is wrong.
"""

from __future__ import annotations

import errno


class RafsError(Exception):
    """Base of every error this package raises on purpose."""

    exit_code = 10
    errno = errno.EIO


class NotFound(RafsError):
    """A named thing (path, blob, digest, ref) does not exist."""

    exit_code = 3
    errno = errno.ENOENT


class AlreadyExists(RafsError):
    """The thing to create is already there."""

    exit_code = 4
    errno = errno.EEXIST


class InvalidArgument(RafsError):
    """The caller asked for something that cannot be done as asked."""

    exit_code = 2
    errno = errno.EINVAL


class FailedPrecondition(RafsError):
    """The state of the world does not allow the operation (size or digest mismatch...)."""

    exit_code = 5
    errno = errno.EIO


class Unavailable(RafsError):
    """A resource is busy or unreachable; retrying later may work."""

    exit_code = 6
    errno = errno.EAGAIN


class Unsupported(RafsError):
    """Valid input using a feature this package does not implement."""

    exit_code = 7
    errno = errno.EOPNOTSUPP


class FormatError(RafsError):
    """Corrupt or malformed input: a bootstrap, blob, tar or manifest that breaks its format."""

    exit_code = 8
    errno = errno.EIO


class IntegrityError(FormatError):
    """Data does not match its recorded digest (a chunk, a blob, a ToC entry)."""

    exit_code = 9
