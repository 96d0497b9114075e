"""The rows of ``benchmarks/methods_mnist1d.py``: the training recipe every run shares, one
:class:`Method` per distillation method, and the groups (one table each)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "torchkd" / "configs" / "mnist1d"
RESULTS = ROOT / "benchmarks" / "results"
LOG_PATH = RESULTS / "methods_mnist1d.jsonl"

STUDENTS = ("cnn", "mlp")
SETTINGS = ("labeled", "transfer")
UNLABELED = -100  # the ignore_index of the CE and DKD losses

# The one training recipe of every run (on top of each method recipe's own train section).
STEPS = 1200  # the default budget; --steps N writes methods_mnist1d_steps<N>.md instead
BATCHES_PER_EPOCH = 50
BATCH_SIZE = 256
TRANSFER_SAMPLES = 25_000
TRANSFER_SEED = 1
TRANSFER_LABELED_PER_BATCH = 64
STAGE1_FRACTION = 0.25


def common_overrides(steps: int) -> list[str]:
    """The training settings every run shares, for a budget of ``steps`` optimizer steps."""
    return [
        f"data.batch_size={BATCH_SIZE}",
        f"train.epochs={steps // BATCHES_PER_EPOCH}",
        "train.optimizer={name: adam, lr: 0.01, weight_decay: 0.0}",
        "train.lr_schedule={name: cosine}",
        "train.progress=false",
        f"train.log_every_steps={steps}",
        "train.checkpoint_every_epochs=1000",
    ]


TEACHER_OVERRIDES = ["train.progress=false", "train.log_every_steps=1000"]


@dataclass(frozen=True)
class Method:
    """One row of the table: its recipe, an optional first stage, and where it applies.

    Attributes:
        label: the name shown in the table.
        recipe: the recipe file in ``configs/mnist1d/``.
        stage1: the first-stage recipe of a two-stage method.
        cnn_only: needs spatial feature maps (n/a for the MLP).
        mlp_overrides: tap paths (and sizes) for the MLP student, whose penultimate layer is
            ``hidden1`` (``[B, 256]``); the teacher's flattened conv3 is ``flatten``
            (``[B, 320]``).
        stage1_mlp_overrides: the same for the first stage.
        overrides: benchmark-only changes to the recipe (shown under the table).
        generations: born-again generations, each a row (the recipe's ``generations:`` chain,
            trained by :func:`torchkd.config.generations.fit_generations`).
        baseline: the method whose runs (same seed) the row's gains are measured against.
        teacher_architecture: trains the teacher's architecture whatever the student family
            (run once, shown in the CNN student's tables only).
    """

    label: str
    recipe: str
    stage1: str | None = None
    cnn_only: bool = False
    mlp_overrides: tuple[str, ...] = ()
    stage1_mlp_overrides: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()
    generations: int = 1
    baseline: str = "baseline"
    teacher_architecture: bool = False


EMBEDDING = ("terms.0.student=hidden1",)
# The recipes' K = 1024 CRD negatives cost 0.75 s per step at batch 256 on one CPU thread (the
# bank gathers dominate), 64 cost 0.06 s; RKD's angle term builds B^3 = 16.7M triplet angles.
CRD_BUDGET = ("terms.0.loss_kwargs.num_negatives=64",)
CRD_MLP = ("terms.0.student=hidden1", "terms.0.loss_kwargs.student_dim=256")
METHODS: dict[str, Method] = {
    "baseline": Method("baseline (CE)", "baseline.yaml"),
    "kd": Method("KD", "kd.yaml"),
    "fitnets": Method(
        "FitNets (hint stage, then KD)",
        "fitnets.yaml",
        stage1="fitnets_stage1_hint.yaml",
        stage1_mlp_overrides=(
            "terms.0.student=hidden1",
            "terms.0.teacher=flatten",
            "terms.0.adapter=linear",
        ),
    ),
    "at": Method("AT", "at.yaml", cnn_only=True),
    "nst": Method("NST", "nst.yaml", cnn_only=True),
    "fsp": Method("FSP", "fsp.yaml", cnn_only=True),
    "pkt": Method("PKT", "pkt.yaml", mlp_overrides=EMBEDDING),
    "vid": Method(
        "VID",
        "vid.yaml",
        mlp_overrides=(
            "terms.0.student=hidden1",
            "terms.0.teacher=flatten",
            "terms.0.loss_kwargs={num_input_channels: 256, num_mid_channels: 320, "
            "num_target_channels: 320}",
        ),
    ),
    "factor_transfer": Method(
        "factor transfer",
        "factor_transfer.yaml",
        stage1="factor_transfer_stage1_paraphraser.yaml",
        cnn_only=True,
    ),
    "attention_align": Method(
        "attention-weighted alignment",
        "attention_align.yaml",
        mlp_overrides=(  # one student layer, one (flat) teacher layer: a single aligned pair
            "terms.0.student=[hidden1]",
            "terms.0.teacher=[flatten]",
            "terms.0.loss_kwargs={student_channels: [256], teacher_channels: [320]}",
        ),
    ),
    "rkd": Method(
        "RKD (distance term)",
        "rkd.yaml",
        mlp_overrides=EMBEDDING,
        overrides=("terms.0.loss_kwargs.angle_weight=0.0",),
    ),
    "sp": Method("SP", "sp.yaml", mlp_overrides=EMBEDDING),
    "cc": Method("CC", "cc.yaml", mlp_overrides=EMBEDDING),
    "crd": Method("CRD (K = 64)", "crd.yaml", mlp_overrides=CRD_MLP, overrides=CRD_BUDGET),
    "crd_kd": Method(
        "CRD + KD (K = 64)", "crd_kd.yaml", mlp_overrides=CRD_MLP, overrides=CRD_BUDGET
    ),
    "dkd": Method("DKD", "dkd.yaml"),
    "dist": Method("DIST", "dist.yaml"),
    "ls_kd": Method("KD + logit standardization", "ls_kd.yaml"),
    # no teacher: the student's deepest exit teaches its early exits (cnn1d_exits)
    "byot": Method("BYOT (self-distillation, deepest exit)", "byot.yaml", cnn_only=True),
    # label-free: the runner's batches replace the recipe's own transfer set and augmentation
    "seed": Method(
        "SEED + label-free KD",
        "seed.yaml",
        mlp_overrides=EMBEDDING,
        overrides=("data.transfer=null", "data.augment=null"),
    ),
    # born-again: the teacher's own architecture (CNN1D width 64) distilled generation after
    # generation; its baseline is that architecture trained alone with CE on the same steps
    "baseline_wide": Method(
        "baseline (CE), teacher architecture",
        "baseline.yaml",
        overrides=("student.kwargs={width: 64}",),
        teacher_architecture=True,
    ),
    "born_again": Method(
        "born-again, teacher architecture",
        "born_again.yaml",
        generations=3,
        baseline="baseline_wide",
        teacher_architecture=True,
    ),
}
BASELINES = ("baseline", "baseline_wide")  # CE only: no unlabeled rows, no transfer runs
# --group: which methods a table holds (each group has its own recipe key and table file)
GROUPS = {
    "all": tuple(name for name in METHODS if not METHODS[name].teacher_architecture),
    "self": ("baseline", "kd", "byot", "seed", "baseline_wide", "born_again"),
}
GROUP_STUDENTS = {"all": STUDENTS, "self": ("cnn",)}
SELF_NOTES = [
    "- BYOT: the top-1 of the student's deepest exit (its logits), same width as the baseline",
    "- SEED + label-free KD: no label reaches the loss; in the labeled setting its inputs are "
    "the labeled rows, in the transfer setting the labeled and unlabeled rows",
    "- born-again: the teacher's architecture (CNN1D width 64) trained with the teacher's "
    "outputs only (KD, T = 1): generation 1 from the cached teacher, generation g > 1 a fresh "
    "network (seed generation_seed(seed, g)) taught by generation g − 1's best-validation "
    "`best.pt` (`generations: 3`, run by `fit_generations`); its gains are against the "
    "teacher architecture trained alone with CE (same steps, same seed)",
]
