"""Token terms of every family on 2 processes (torchrun, gloo) whose valid-token counts differ
per rank and per micro-batch (``token_ranks.counts()``) train the student the one process does on
the same global batches: the loop's global count normalizes every token term."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tolerances import FLOAT64_EPS, float32_tolerance

from . import distributed_cases as cases
from . import token_ranks

# Both runs are float64 and differ in summation order only (2 micro-batches x 2 ranks and an
# all-reduce vs one batch): a step's rounding is <= n eps64 of terms <= 1 (n <= 64: the 48
# positions of a step's batch, or the widest layer), and each later step amplifies an earlier
# difference by at most 1 + eta L; over the K = 4 steps (eta L <= 4.6) this allows
# (1 + eta L)^4 <= 1e3. A per-process or per-micro-batch mean is off by >= 1e-3.
BOUND = 1e3 * float32_tolerance(4 * 64, 1.0, FLOAT64_EPS)


def test_the_shares_are_uneven() -> None:
    counts = token_ranks.counts()
    assert counts == [[[9, 1], [8, 1]], [[0, 9], [2, 8]]]  # rank 0 has none in one
    for step in counts:
        assert len({sum(share) for share in zip(*step, strict=True)}) == 2  # per rank
        assert len({sum(shares) for shares in step}) == 2  # per micro-batch


@pytest.mark.distributed
def test_two_uneven_ranks_of_two_micro_batches_equal_one_process(tmp_path: Path) -> None:
    result = cases.torchrun(str(Path(token_ranks.__file__)), str(tmp_path))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    ranks = torch.load(tmp_path / "ranks.pt", weights_only=True)
    single = token_ranks.one_process(tmp_path / "one")
    start = cases.trained_state(token_ranks.distiller())
    moved = max(float((single[k] - start[k]).abs().max()) for k in single)
    difference = max(float((ranks[k] - single[k]).abs().max()) for k in single)
    print(f"max |dweight| 2 ranks vs 1 process: {difference:.3g} (bound {BOUND:.3g}); "
          f"trained weights moved {moved:.3g}")  # fmt: skip
    assert ranks.keys() == single.keys()
    assert difference < BOUND and moved > 1e-2
