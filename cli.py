#!/usr/bin/env python3
"""Run the pqmim command line from a checkout: `python cli.py encode photo.png -o photo.pqm`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pqmim.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
