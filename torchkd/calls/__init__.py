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
from torchkd.calls.checks import checked_call, term_loss
from torchkd.calls.table import CALLS, call_for

__all__ = ["CALLS", "Call", "Example", "Owner", "call_for", "checked_call", "term_loss"]
