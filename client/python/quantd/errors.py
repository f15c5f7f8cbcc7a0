"""Typed exceptions: one class per gRPC status code, all under QuantdError.

    try:
        c.quantize(x, format="int5")
    except quantd.InvalidArgument as e:   # also a ValueError
        print(e.message)                  # the server's words: what was wrong, what is accepted

The server's status message travels unchanged in ``message`` (and ``str(e)``); ``code`` is the
``grpc.StatusCode``. Checks the client makes itself (an unknown ``rounding=`` name, a request too
large for a call that has no streamed form) raise the same classes, as the C++ client does.
"""

from __future__ import annotations

from typing import Optional

import grpc

__all__ = [
    "QuantdError", "Cancelled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
    "AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted",
    "OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated",
    "from_rpc_error",
]


class QuantdError(Exception):
    """A call failed. ``code``: grpc.StatusCode; ``message``: the server's (or client's) text;
    ``method``: the RPC, e.g. "Quantize" (None for checks made before any call)."""

    code = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, *, method: Optional[str] = None,
                 code: Optional[grpc.StatusCode] = None):
        super().__init__(message)
        self.message = message
        self.method = method
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        name = self.code.name if isinstance(self.code, grpc.StatusCode) else str(self.code)
        where = f"{self.method}: " if self.method else ""
        return f"{where}{self.message} ({name})"


class Cancelled(QuantdError):
    code = grpc.StatusCode.CANCELLED


class Unknown(QuantdError):
    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(QuantdError, ValueError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(QuantdError, TimeoutError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(QuantdError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(QuantdError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(QuantdError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(QuantdError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(QuantdError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(QuantdError):
    code = grpc.StatusCode.ABORTED


class OutOfRange(QuantdError):
    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(QuantdError, NotImplementedError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(QuantdError):
    code = grpc.StatusCode.INTERNAL


class Unavailable(QuantdError, ConnectionError):
    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(QuantdError):
    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(QuantdError):
    code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE = {cls.code: cls for cls in (
    Cancelled, Unknown, InvalidArgument, DeadlineExceeded, NotFound, AlreadyExists,
    PermissionDenied, ResourceExhausted, FailedPrecondition, Aborted, OutOfRange, Unimplemented,
    Internal, Unavailable, DataLoss, Unauthenticated)}


def from_rpc_error(error: grpc.RpcError, method: Optional[str] = None) -> QuantdError:
    """The QuantdError subclass for a grpc.RpcError, carrying its status message."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else None
    cls = _BY_CODE.get(code, Unknown)
    return cls(details if details is not None else str(error), method=method, code=code)
