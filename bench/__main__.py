"""``python -m bench``: the benchmark harness (see bench/README.md and bench/harness.py)."""

from __future__ import annotations

import sys

from bench.harness import main

if __name__ == "__main__":
    sys.exit(main())
