"""``python -m pgwake.cli``: the ``pgwake`` command."""

from __future__ import annotations

import sys

from pgwake.cli.main import main

sys.exit(main())
