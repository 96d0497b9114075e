"""torchkd.losses — layer 1: pure distillation math.

Every loss is a function ``x_loss(...)`` plus a thin ``XLoss(nn.Module)`` that stores the
hyperparameters and calls the function. Losses register themselves; build one by name with
:func:`create` and list them with :func:`available`.

Rules every loss follows (see :mod:`torchkd.losses._common`):

- precision: computed with float32 accumulation at least, and returned in that dtype (float32
  for float16/bfloat16 inputs; a float32 student with a float64 teacher is promoted to float64);
- an empty input (e.g. a batch of 0 samples) is a ``ValueError`` naming the argument; rows left
  out by ``mask``/``ignore_index`` are not: with none left a loss is exactly 0;
- hyperparameters of the wrong type are a ``TypeError`` and out-of-range ones (NaN and
  infinities included) a ``ValueError``, both naming the argument; temperatures must be in
  ``(0, 1e6]``;
- ``-inf`` logits shared by student and teacher (vocabulary masking) contribute nothing, and
  values near the float32 range give the float64 result (or ``inf`` where that is out of range).
"""

from torchkd.losses._common import check_pair as check_pair
from torchkd.losses.attention_align import *  # noqa: F403
from torchkd.losses.byot import *  # noqa: F403
from torchkd.losses.ce import *  # noqa: F403
from torchkd.losses.crd import *  # noqa: F403
from torchkd.losses.crd_inbatch import *  # noqa: F403
from torchkd.losses.crd_sampling import *  # noqa: F403
from torchkd.losses.dist import *  # noqa: F403
from torchkd.losses.divergences import *  # noqa: F403
from torchkd.losses.dkd import *  # noqa: F403
from torchkd.losses.factor_transfer import *  # noqa: F403
from torchkd.losses.feature import *  # noqa: F403
from torchkd.losses.fused_linear import *  # noqa: F403
from torchkd.losses.fused_options import *  # noqa: F403
from torchkd.losses.fused_uld import *  # noqa: F403
from torchkd.losses.hybrid_uld import *  # noqa: F403
from torchkd.losses.kl import *  # noqa: F403
from torchkd.losses.logit import *  # noqa: F403
from torchkd.losses.mixed_kl import *  # noqa: F403
from torchkd.losses.multi_teacher import *  # noqa: F403
from torchkd.losses.pkt import *  # noqa: F403
from torchkd.losses.registry import available as available
from torchkd.losses.registry import create as create
from torchkd.losses.registry import entry as entry
from torchkd.losses.registry import register as register
from torchkd.losses.relation import *  # noqa: F403
from torchkd.losses.seed import *  # noqa: F403
from torchkd.losses.uld import *  # noqa: F403
from torchkd.losses.vid import *  # noqa: F403
