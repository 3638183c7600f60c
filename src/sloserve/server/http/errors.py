"""The one place an error code becomes an HTTP status."""

from __future__ import annotations

from typing import Final

from sloserve.errors import ErrorCode

HTTP_STATUS: Final[dict[ErrorCode, int]] = {
    ErrorCode.INVALID_ARGUMENT: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.RESOURCE_EXHAUSTED: 429,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.DEADLINE_EXCEEDED: 504,
    ErrorCode.INTERNAL: 500,
}

RETRY_AFTER_S: Final[dict[ErrorCode, str]] = {
    ErrorCode.RESOURCE_EXHAUSTED: "1",
    ErrorCode.UNAVAILABLE: "1",
}
