"""torchkd.losses — layer 1: pure distillation math.

Every loss is a function ``x_loss(...)`` plus a thin ``XLoss(nn.Module)`` that stores the
hyperparameters and calls the function. Losses register themselves; build one by name with
:func:`create` and list them with :func:`available`.
"""

from torchkd.losses.attention_align import *  # noqa: F403
from torchkd.losses.ce import *  # noqa: F403
from torchkd.losses.crd import *  # noqa: F403
from torchkd.losses.dist import *  # noqa: F403
from torchkd.losses.dkd import *  # noqa: F403
from torchkd.losses.factor_transfer import *  # noqa: F403
from torchkd.losses.feature import *  # noqa: F403
from torchkd.losses.fused_linear import *  # noqa: F403
from torchkd.losses.kl import *  # noqa: F403
from torchkd.losses.logit import *  # noqa: F403
from torchkd.losses.multi_teacher import *  # noqa: F403
from torchkd.losses.pkt import *  # noqa: F403
from torchkd.losses.registry import available as available
from torchkd.losses.registry import create as create
from torchkd.losses.registry import entry as entry
from torchkd.losses.registry import register as register
from torchkd.losses.relation import *  # noqa: F403
from torchkd.losses.vid import *  # noqa: F403
