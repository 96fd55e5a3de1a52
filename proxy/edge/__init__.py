"""The client-facing pipeline: one connection from accept to relay.

``client_connection`` drives it: ``handshake`` (PROXY header, TLS, startup), ``routing``,
``admission`` and ``throttle`` (what a stranger may cost), ``client_auth`` (SCRAM with the
client), then a backend (``server_reuse``, ``warm_sockets``, both kept per endpoint by
``kept_connections``, ``compute_login``) and the ``relay``. ``cancel_keys`` routes
CancelRequests. See ARCHITECTURE.md.
"""
