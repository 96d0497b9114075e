"""The call conventions (``torchkd.calls``): one per registered signature. (Their example
inputs feed every registered loss in ``tests/losses/test_template.py``.)"""

from __future__ import annotations

import typing

import pytest

from torchkd.calls import CALLS, call_for
from torchkd.losses.registry import Signature


def test_every_signature_has_one_call_convention() -> None:
    assert sorted(CALLS) == sorted(typing.get_args(Signature))
    assert all(call.signature == name for name, call in CALLS.items())


def test_an_unknown_signature_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"signature must be one of .*got 'logit'"):
        call_for("logit")
