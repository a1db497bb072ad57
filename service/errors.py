"""One error shape for every failure: ``{"error": {"code", "message", "request_id"}}`` with a 4xx/5xx status."""

from __future__ import annotations


class ApiError(Exception):
    """A request the service refuses, with its HTTP status and a stable machine-readable code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_body(code: str, message: str, request_id: str | None) -> dict[str, object]:
    return {"error": {"code": code, "message": message, "request_id": request_id}}
