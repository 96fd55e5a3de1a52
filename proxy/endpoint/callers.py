"""Who asks the control plane, and how it refuses.

Rule: every control-plane call names its ``Caller`` (the admin, or a scoped token and its
quotas), and every refusal is one ``ControlError`` with a stable ``code`` and the HTTP
status the API answers with. An endpoint a caller may not see is "not found" to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["ADMIN", "Caller", "ControlError", "endpoint_not_found"]


class ControlError(Exception):
    """A refused request: ``code`` is stable (API clients branch on it), ``status`` the
    HTTP status the API answers with."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def endpoint_not_found(name: str) -> ControlError:
    """The error for an endpoint that does not exist, or that the caller may not see."""
    return ControlError("endpoint_not_found", f'endpoint "{name}" does not exist', 404)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking: the admin (``token_id`` None) or a scoped token and its quotas."""

    token_id: str | None
    max_endpoints: int | None = None
    max_ttl_seconds: float | None = None

    @property
    def is_admin(self) -> bool:
        return self.token_id is None


ADMIN: Final = Caller(None)
