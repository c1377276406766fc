"""The emulator's one error type, answered as real providers do: ``{"errorCode", "message"}``."""

from __future__ import annotations


class EmulatorError(Exception):
    """An HTTP error answer: status, a stable ``errorCode`` and a short, secret-free message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
