"""One call-convention object per loss signature (``torchkd.losses.registry.Signature``): how
the :class:`~torchkd.distiller.Distiller` checks a term, plans what the models keep of a forward
pass, builds the term's parts and calls its loss; the loss tests draw their inputs from it.

    >>> from torchkd.calls import call_for
    >>> call = call_for("logits_labels")
    >>> call.reads_teacher, call.adapts, call.gathers
    (True, False, False)
"""

from __future__ import annotations

from torchkd.calls.base import Call, Example, Owner
from torchkd.calls.features import EmbeddingsCall, FeatureListsCall, FeaturesCall, IndexedCall
from torchkd.calls.hidden import CACHE_KEYS, HiddenStatesCall
from torchkd.calls.logits import LabelsCall, LogitsCall, LogitsLabelsCall, MultiTeacherCall

__all__ = ["CACHE_KEYS", "CALLS", "Call", "Example", "Owner", "call_for"]

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
    )
}


def call_for(signature: str) -> Call:
    """The call convention of ``signature``."""
    try:
        return CALLS[signature]
    except KeyError:
        raise ValueError(f"signature must be one of {tuple(CALLS)}, got {signature!r}") from None
