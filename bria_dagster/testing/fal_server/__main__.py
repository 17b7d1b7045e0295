"""``python -m bria_dagster.testing.fal_server --latency 0.5 --rate-429 0.1 ...``"""

import contextlib
import sys

from .process import main

with contextlib.suppress(KeyboardInterrupt):
    sys.exit(main())
