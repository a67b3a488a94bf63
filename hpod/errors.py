"""The one error root of hpod, with a subclass per area."""

from __future__ import annotations


class HpodError(Exception):
    """Root of every error hpod raises on purpose."""


class RequestRejected(HpodError):
    """A request was well-formed enough to answer but cannot be honoured.

    ``field`` names the part of the request that was wrong (dotted path), so the sender can
    fix it without reading logs; ``code`` is a stable machine-readable reason.
    """

    def __init__(self, code: str, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.code = code
        self.field = field
        self.message = message

    def as_dict(self) -> dict[str, str]:
        """The error as it travels in a reply or a ``request.rejected`` event."""
        return {"code": self.code, "field": self.field, "message": self.message}


class UnknownObjective(HpodError):
    """An objective name is not in the registry."""


class ConfigError(HpodError):
    """The settings or a mode file are invalid."""
