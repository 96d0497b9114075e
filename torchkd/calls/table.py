"""The call convention of each signature."""

from __future__ import annotations

from torchkd.calls.base import Call
from torchkd.calls.exits import SelfExitsCall
from torchkd.calls.features import EmbeddingsCall, FeatureListsCall, FeaturesCall, IndexedCall
from torchkd.calls.hidden import HiddenStatesCall
from torchkd.calls.logits import LabelsCall, LogitsCall, LogitsLabelsCall, MultiTeacherCall

__all__ = ["CALLS", "call_for"]

CALLS: dict[str, Call] = {
    call.signature: call
    for call in (
        LabelsCall(),
        LogitsCall(),
        LogitsLabelsCall(),
        MultiTeacherCall(),
        FeaturesCall(),
        FeatureListsCall(),
        EmbeddingsCall(),
        IndexedCall(),
        HiddenStatesCall(),
        SelfExitsCall(),
    )
}


def call_for(signature: str) -> Call:
    """The call convention of ``signature``."""
    try:
        return CALLS[signature]
    except KeyError:
        raise ValueError(f"signature must be one of {tuple(CALLS)}, got {signature!r}") from None
