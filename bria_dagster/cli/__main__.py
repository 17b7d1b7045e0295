"""``python -m bria_dagster.cli``: the same as the ``bria-dagster`` command."""

import sys

from .commands import main

sys.exit(main())
