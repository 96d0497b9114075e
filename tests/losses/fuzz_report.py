"""Print the fuzz suite's outcome counts per loss (``python -m tests.losses.fuzz_report``).

Runs the deterministic grid of ``test_fuzz.py`` over every registered loss, prints each case
that is not acceptable (silent non-finite, unclear exception) and the table of counts.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TORCHKD_COMPILE", "0")

from .test_fuzz import OK_CLASSES, format_counts, run_grid


def main() -> int:
    start = time.perf_counter()
    counts = run_grid(sys.argv[1:] or None)
    print(format_counts(counts))
    cases = sum(sum(counter.values()) for counter in counts.values())
    print(f"{cases} cases in {time.perf_counter() - start:.1f} s")
    bad = sum(n for counter in counts.values() for c, n in counter.items() if c not in OK_CLASSES)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
