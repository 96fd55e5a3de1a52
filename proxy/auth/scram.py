"""SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it. Pure: bytes in, bytes out.

This module gathers the public names of ``saslprep``, ``scram_verifier``,
``scram_exchange``, ``scram_server`` and ``scram_client``.

Rule: nothing here does I/O, keeps time or logs. Secrets (passwords, proofs, ClientKeys,
verifiers) never appear in a ``repr`` or an exception message, so callers may log both.

Three jobs:

* Verifiers. ``make_verifier`` writes and ``parse_verifier`` reads the ``rolpassword``
  string Postgres stores, ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``
  (all base64). A verifier lets a role log in without pgwake ever storing the password.
* The edge. ``ScramServer`` is the server side (Postgres's ``auth-scram.c``), run with the
  verifier alone. From the client's proof it recovers the ClientKey (ARCHITECTURE.md).
* The compute. ``ScramClient`` is the client side (libpq's ``fe-auth-scram.c``), run with
  that ClientKey, or with a password where pgwake has one.

The exchange (RFC 5802 section 3) and the methods that make or read each message::

    ScramClient                                   ScramServer
    client_first_message()  client-first-message  ─▶  handle_client_first()
    handle_server_first()   ◀─  server-first-message
                            client-final-message  ─▶  handle_client_final()
    handle_server_final()   ◀─  server-final-message

The keys, with H = SHA-256, HMAC = HMAC-SHA-256 and Hi = PBKDF2-HMAC-SHA-256::

    SaltedPassword  = Hi(SASLprep(password), salt, iterations)
    ClientKey       = HMAC(SaltedPassword, "Client Key")     StoredKey = H(ClientKey)
    ServerKey       = HMAC(SaltedPassword, "Server Key")
    AuthMessage     = client-first-message-bare "," server-first-message ","
                      client-final-message-without-proof
    ClientProof     = ClientKey XOR HMAC(StoredKey, AuthMessage)
    ServerSignature = HMAC(ServerKey, AuthMessage)

So whoever holds StoredKey recovers ClientKey = ClientProof XOR HMAC(StoredKey,
AuthMessage) and checks it with H(ClientKey) == StoredKey; with it, and the ServerKey to
check the reply, it can log in to any server that has the same verifier.
"""

from __future__ import annotations

from pgwake.auth.saslprep import saslprep
from pgwake.auth.scram_client import ScramClient
from pgwake.auth.scram_exchange import (
    SCRAM_SHA_256,
    SCRAM_SHA_256_PLUS,
    ChannelBinding,
    ScramAuthenticationFailed,
    ScramChannelBindingFailed,
    ScramError,
    ScramProtocolError,
    ScramState,
    tls_server_end_point,
)
from pgwake.auth.scram_server import ScramServer, ServerFinal
from pgwake.auth.scram_verifier import (
    DEFAULT_ITERATIONS,
    ScramVerifier,
    make_verifier,
    parse_verifier,
)

__all__ = [
    "DEFAULT_ITERATIONS",
    "SCRAM_SHA_256",
    "SCRAM_SHA_256_PLUS",
    "ChannelBinding",
    "ScramAuthenticationFailed",
    "ScramChannelBindingFailed",
    "ScramClient",
    "ScramError",
    "ScramProtocolError",
    "ScramServer",
    "ScramState",
    "ScramVerifier",
    "ServerFinal",
    "make_verifier",
    "parse_verifier",
    "saslprep",
    "tls_server_end_point",
]
