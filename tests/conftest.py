"""Shared test configuration: every test module starts with a clean environment."""

from __future__ import annotations

import os

# Tests never read a developer's PGWAKE_* settings by accident.
for _name in [name for name in os.environ if name.startswith("PGWAKE_")]:
    del os.environ[_name]
