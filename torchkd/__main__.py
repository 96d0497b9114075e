"""``python -m torchkd ...``: the same command line as the ``torchkd`` script."""

from __future__ import annotations

import sys

from torchkd.cli import main

if __name__ == "__main__":
    sys.exit(main())
