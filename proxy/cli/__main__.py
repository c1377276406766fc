"""`python -m proxy.cli`."""

from __future__ import annotations

import sys

from proxy.cli.main import main

sys.exit(main())
