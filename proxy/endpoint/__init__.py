"""The endpoint domain: its states (``states``), its lifecycle (``lifecycle``,
``lifecycles``) and the jobs beside it (``verifiers``, ``disk_usage``), the hook through
which it tells the edge when to close what it keeps (``compute_resources``), the
control-plane service that creates, lists, branches and deletes endpoints
(``control_plane``, composing ``tokens``, ``reservations``, ``role_passwords`` and
``reaper``; its callers and errors in ``callers``, its answers in ``views``), and their
names. It never imports the edge."""
