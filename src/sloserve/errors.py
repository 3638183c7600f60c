"""The closed set of error codes and the exception tree.

Every failure a client can see is one of these codes. Transports map a code to an
HTTP status or a gRPC status in one dict each (``server/http/errors.py``,
``server/grpc/errors.py``). Failures cross process boundaries as
``(code.value, message)`` pairs, never as pickled exceptions; see
:func:`error_from_code`.

    SloserveError
     ├── InvalidArgumentError      malformed payload, wrong shape/dtype, bad config
     ├── NotFoundError             unknown model, version or output
     ├── PayloadTooLargeError      body over the configured limit
     ├── ResourceExhaustedError    queue full: retry later
     ├── UnavailableError          not ready, unloaded, replica lost twice
     │    └── ReplicaDiedError     a worker died while running a batch
     ├── DeadlineExceededError     could not be served in time
     └── InternalError             a bug or a model failure on valid input
"""

from __future__ import annotations

import enum
from typing import ClassVar


class ErrorCode(enum.Enum):
    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    UNAVAILABLE = "unavailable"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    INTERNAL = "internal"


class SloserveError(Exception):
    """Base of every error sloserve reports to a client or a CLI user."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_wire(self) -> tuple[str, str]:
        """The form that crosses process boundaries."""
        return (self.code.value, self.message)


class InvalidArgumentError(SloserveError):
    code = ErrorCode.INVALID_ARGUMENT


class NotFoundError(SloserveError):
    code = ErrorCode.NOT_FOUND


class PayloadTooLargeError(SloserveError):
    code = ErrorCode.PAYLOAD_TOO_LARGE


class ResourceExhaustedError(SloserveError):
    code = ErrorCode.RESOURCE_EXHAUSTED


class UnavailableError(SloserveError):
    code = ErrorCode.UNAVAILABLE


class ReplicaDiedError(UnavailableError):
    """The replica running a batch died; the batch may be retried elsewhere."""


class DeadlineExceededError(SloserveError):
    code = ErrorCode.DEADLINE_EXCEEDED


class InternalError(SloserveError):
    code = ErrorCode.INTERNAL


_BY_CODE: dict[ErrorCode, type[SloserveError]] = {
    ErrorCode.INVALID_ARGUMENT: InvalidArgumentError,
    ErrorCode.NOT_FOUND: NotFoundError,
    ErrorCode.PAYLOAD_TOO_LARGE: PayloadTooLargeError,
    ErrorCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    ErrorCode.UNAVAILABLE: UnavailableError,
    ErrorCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    ErrorCode.INTERNAL: InternalError,
}


def error_from_code(code: str, message: str) -> SloserveError:
    """Rebuild an error from its wire form; unknown codes become internal errors."""
    try:
        cls = _BY_CODE[ErrorCode(code)]
    except ValueError:
        cls = InternalError
    return cls(message)
