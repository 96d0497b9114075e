"""Test-session settings: eager loss paths and one thread (the suite shares 2 cores)."""

from __future__ import annotations

import os

import torch
from hypothesis import settings

# Losses that can be compiled run their eager path under test: compilation is slow to warm up
# and its numerics are covered by the eager path's tests.
os.environ.setdefault("TORCHKD_COMPILE", "0")
torch.set_num_threads(1)

# Shared CI machines are noisy: no per-example deadline for property tests.
settings.register_profile("torchkd", deadline=None)
settings.load_profile("torchkd")
