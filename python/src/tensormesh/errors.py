"""The one exception type the client raises, and its warning category."""

from __future__ import annotations

from typing import Optional

__all__ = ["TensormeshError", "TensormeshWarning"]


class TensormeshError(Exception):
    """An error from the node (its ``{"error": {"code", "message"}}`` answer) or from the client.

    One type for everything so callers need a single ``except``; ``code`` is
    the stable part to branch on (``ERR_SHAPE_MISMATCH``, ``ERR_UNREACHABLE``,
    ``ERR_CANCELLED`` ...), ``message`` is for people. ``status`` is the HTTP
    status the node answered with, or ``None`` when the error arose on this
    side (a bad dtype caught before sending, an unreachable node, a job that
    finished failed).
    """

    code: str
    message: str
    status: Optional[int]

    def __init__(self, code: str, message: str, status: Optional[int] = None) -> None:
        super().__init__(code, message, status)
        self.code = code
        self.message = message
        self.status = status

    def __str__(self) -> str:
        where = f" (HTTP {self.status})" if self.status is not None else ""
        return f"{self.code}: {self.message}{where}"

    def __repr__(self) -> str:
        return f"TensormeshError({self.code!r}, {self.message!r}, status={self.status!r})"


class TensormeshWarning(UserWarning):
    """Raised as a warning when the client changes data to fit the mesh (float64 to float32)."""
