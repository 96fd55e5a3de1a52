"""API tokens: the admin's, and scoped ones minted, revoked and authenticated here.

Rule: a scoped token's secret is shown once, when minted, and stored only as its SHA-256
hash; a bearer secret is compared with the admin token in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from pgwake.endpoint.callers import ADMIN, Caller, ControlError

if TYPE_CHECKING:
    from pgwake.catalog import Catalog

__all__ = ["MintedToken", "Tokens"]

logger = logging.getLogger(__name__)
_TOKEN_PREFIX: Final = "pgw_"  # noqa: S105 (a prefix, not a secret)


@dataclass(frozen=True, slots=True)
class MintedToken:
    """A new scoped token; ``secret`` is shown once and stored only as a hash."""

    id: str
    secret: str
    label: str | None
    max_endpoints: int | None
    max_ttl_seconds: float | None

    def __repr__(self) -> str:
        return f"MintedToken({self.id})"


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Tokens:
    """The admin token and the catalog's scoped tokens."""

    def __init__(self, catalog: Catalog, admin_token: str) -> None:
        self._catalog = catalog
        self._admin_token = admin_token

    def authenticate(self, secret: str) -> Caller | None:
        """The caller a bearer secret stands for, or ``None``."""
        if hmac.compare_digest(secret.encode(), self._admin_token.encode()):
            return ADMIN
        found = self._catalog.token_by_hash(_hash_secret(secret))
        if found is None:
            return None
        token_id, _, max_endpoints, max_ttl = found
        return Caller(token_id, max_endpoints, max_ttl)

    def mint(
        self,
        caller: Caller,
        *,
        label: str | None,
        max_endpoints: int | None,
        max_ttl_seconds: float | None,
    ) -> MintedToken:
        """Mint a scoped token (admin only); raises ``ControlError`` ``forbidden``."""
        if not caller.is_admin:
            raise ControlError("forbidden", "only the admin token can mint tokens", 403)
        token_id = "tok_" + secrets.token_hex(6)
        secret = _TOKEN_PREFIX + secrets.token_urlsafe(32)
        self._catalog.add_token(
            token_id, _hash_secret(secret), label, max_endpoints, max_ttl_seconds
        )
        logger.info(
            "event=token_minted token=%s max_endpoints=%s max_ttl_s=%s",
            token_id,
            max_endpoints,
            max_ttl_seconds,
        )
        return MintedToken(token_id, secret, label, max_endpoints, max_ttl_seconds)

    def revoke(self, caller: Caller, token_id: str) -> None:
        """Revoke a token (admin only); raises ``ControlError`` ``forbidden``,
        ``token_not_found``."""
        if not caller.is_admin:
            raise ControlError("forbidden", "only the admin token can revoke tokens", 403)
        if not self._catalog.delete_token(token_id):
            raise ControlError("token_not_found", f"token {token_id} does not exist", 404)
