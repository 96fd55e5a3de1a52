"""The endpoint domain: its lifecycle (``lifecycle``), the control-plane service that
creates, lists, branches and deletes endpoints (``control_plane``), and their names."""
