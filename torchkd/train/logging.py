"""Run logging: a JSONL metrics file, TensorBoard event files, a tqdm progress bar on a
terminal and, without one (logs, CI, nohup), periodic step lines (:class:`StepLines`).

``metrics.jsonl`` holds one JSON object per line, of two kinds::

    {"kind": "step", "epoch": 1, "step": 20, "lr": 0.003, "loss": 0.71, "grad_norm": 1.9,
     "terms": {"kd": 0.52, "ce": 0.41}, "weights": {"kd": 0.9, "ce": 0.1}, "samples_per_s": 5e3}
    {"kind": "epoch", "epoch": 1, "step": 57, "lr": 0.003, "time_s": 2.1, "samples_per_s": 1.7e3,
     "nonfinite_steps": 0, "train": {"loss": 0.8, "terms/kd": 0.6}, "val": {"top1": 0.61, ...}}

``step`` counts optimizer steps taken so far and ``epoch`` epochs started (1-based). Step
values are means over the steps since the previous step record; non-finite values are
written as ``null``. The same scalars go to TensorBoard (when ``train.tensorboard`` allows it,
see :class:`RunLogger`) under ``train/...``, ``weights/...``,
``val/...`` and ``test/...``. The JSONL file is flushed at every record; TensorBoard events
are flushed with every epoch record (and by the writer itself every two minutes), not at every
step record.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from torchkd._extras import available, require


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: _finite_or_none(item) for key, item in value.items()}
    return value


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a JSONL file (an empty list when the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _flatten(prefix: str, values: Mapping[str, Any]) -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}/{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(name, value))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def step_record(
    *,
    epoch: int,
    step: int,
    lr: float,
    means: Mapping[str, float],
    weights: dict[str, float],
    samples_per_s: float,
    nonfinite_steps: int,
    loss_scale: float | None,
) -> dict[str, Any]:
    """A ``"step"`` record (module docstring) from the ``means`` of the steps since the last one
    (``loss``, ``grad_norm``, ``terms/<name>``); ``loss_scale`` (fp16) is left out when ``None``.

    Example:
        >>> means = {"loss": 0.7, "grad_norm": 1.9, "terms/kd": 0.5}
        >>> step_record(epoch=1, step=20, lr=0.1, means=means, weights={"kd": 1.0},
        ...             samples_per_s=5e3, nonfinite_steps=0, loss_scale=None)["terms"]
        {'kd': 0.5}
    """
    return {
        "epoch": epoch,
        "step": step,
        "lr": lr,
        "loss": means["loss"],
        "grad_norm": means["grad_norm"],
        "terms": {k.removeprefix("terms/"): v for k, v in means.items() if "/" in k},
        "weights": weights,
        "samples_per_s": samples_per_s,
        "nonfinite_steps": nonfinite_steps,
        **({} if loss_scale is None else {"loss_scale": loss_scale}),
    }


class RunLogger:
    """Writes step and epoch records to ``metrics.jsonl`` and ``tb/`` of a run directory.

    Args:
        run_dir: the run directory.
        resume_step: when resuming, the checkpoint's step: JSONL records after it are
            dropped and TensorBoard purges events after it, so a resumed run's logs read as
            one run.
        resume_epoch: when resuming, the checkpoint's finished epochs (epoch records after it
            are dropped).
        tensorboard: write TensorBoard event files under ``tb/``: ``None`` when the
            ``tensorboard`` package is installed, ``True`` always (``ImportError`` naming the
            ``log`` extra when it is not), ``False`` never.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        resume_step: int | None = None,
        resume_epoch: int | None = None,
        tensorboard: bool | None = None,
    ) -> None:
        if tensorboard is None:
            tensorboard = available("tensorboard")
        elif tensorboard:  # before any file is touched
            require("tensorboard", "log", "train.tensorboard=true (TensorBoard event files)")
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        else:
            self._truncate(resume_step, resume_epoch or 0)
        self._stream = self.path.open("a")
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self._writer = SummaryWriter(log_dir=str(Path(run_dir) / "tb"), purge_step=purge)

    def _truncate(self, step: int, epoch: int) -> None:
        def keep(record: dict[str, Any]) -> bool:
            if record.get("kind") == "epoch":
                return record["epoch"] <= epoch
            return record["step"] <= step

        text = self.path.read_text() if self.path.is_file() else ""
        lines = text.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):  # torn by a kill in the middle of a write
            lines.pop()
        kept = [record for record in map(json.loads, lines) if keep(record)]
        self.path.write_text("".join(json.dumps(record) + "\n" for record in kept))

    def _write(self, record: dict[str, Any]) -> None:
        self._stream.write(json.dumps(_finite_or_none(record), allow_nan=False) + "\n")
        self._stream.flush()

    def log_step(self, record: dict[str, Any]) -> None:
        """Write a ``"step"`` record (keys as in the module docstring)."""
        self._write({"kind": "step", **record})
        if self._writer is None:
            return
        step = record["step"]
        scalars = {"train/loss": record.get("loss"), "train/lr": record.get("lr")}
        scalars["train/grad_norm"] = record.get("grad_norm")
        scalars["train/samples_per_s"] = record.get("samples_per_s")
        scalars["train/loss_scale"] = record.get("loss_scale")
        scalars.update(_flatten("train/terms", record.get("terms", {})))
        scalars.update(_flatten("weights", record.get("weights", {})))
        self._add_scalars(scalars, step)

    def log_epoch(self, record: dict[str, Any]) -> None:
        """Write an ``"epoch"`` record with ``train``/``val`` (and ``test``) metric dicts."""
        self._write({"kind": "epoch", **record})
        if self._writer is None:
            return
        scalars: dict[str, Any] = {"epoch/time_s": record.get("time_s")}
        for split in ("train", "val", "test"):
            scalars.update(
                _flatten(f"{split}_epoch" if split == "train" else split, record.get(split) or {})
            )
        self._add_scalars(scalars, record["step"])
        self._writer.flush()

    def _add_scalars(self, scalars: Mapping[str, Any], step: int) -> None:
        for tag, value in scalars.items():
            if isinstance(value, int | float) and math.isfinite(value):
                self._writer.add_scalar(tag, value, global_step=step)

    def close(self) -> None:
        """Flush and close the files."""
        self._stream.close()
        if self._writer is not None:
            self._writer.close()


def progress_bar(total: int, *, description: str, enabled: bool, initial: int = 0) -> tqdm:
    """A tqdm bar over one epoch's batches; silent when disabled or stderr is not a terminal."""
    show = enabled and sys.stderr.isatty()
    return tqdm(
        total=total,
        initial=initial,
        desc=description,
        disable=not show,
        dynamic_ncols=True,
        leave=False,
    )


def weighted_shares(
    terms: Mapping[str, float | None], weights: Mapping[str, float | None]
) -> dict[str, tuple[float, float]]:
    r"""Each term's weighted value :math:`w_i L_i` and its share of the loss in percent,
    :math:`100\,|w_i L_i| / \sum_j |w_j L_j|`, for the terms with a finite value and a weight
    (``{}`` when every weighted value is 0).

    Example:
        >>> shares = weighted_shares({"kd": 1.5, "hint": 24.5}, {"kd": 1.0, "hint": 0.1})
        >>> {name: (round(value, 6), round(share, 1)) for name, (value, share) in shares.items()}
        {'kd': (1.5, 38.0), 'hint': (2.45, 62.0)}
    """
    weighted = {
        name: weights[name] * value
        for name, value in terms.items()
        if value is not None and math.isfinite(value) and weights.get(name) is not None
    }
    total = sum(abs(value) for value in weighted.values())
    if total == 0 or not math.isfinite(total):
        return {}
    return {name: (value, 100 * abs(value) / total) for name, value in weighted.items()}


def term_texts(record: Mapping[str, Any]) -> dict[str, str]:
    """A step record's terms as progress text: ``kd=1.58 (39%) hint=0.1×24.5=2.45 (61%)``
    once joined as ``name=text`` (the weight is shown unless it is 1; a term without a weight
    shows its value only)."""
    terms = record.get("terms", {})
    weights = record.get("weights", {})
    shares = weighted_shares(terms, weights)
    texts: dict[str, str] = {}
    for name, value in terms.items():
        if name not in shares:
            texts[name] = f"{value:.4g}"
            continue
        weighted, share = shares[name]
        factors = "" if weights[name] == 1 else f"{weights[name]:.3g}×{value:.4g}="
        texts[name] = f"{factors}{weighted:.4g} ({share:.0f}%)"
    return texts


def _duration(seconds: float) -> str:
    """``95`` -> ``1m35s``; ``3725`` -> ``1h02m05s``."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class StepLines:
    """Step lines for a run without a terminal: at a step record, when ``every_s`` seconds
    have passed since the previous line, one line to stderr::

        epoch 1/3 step 120/600: loss=0.7123 kd=0.9×0.52=0.468 (92%) ce=0.1×0.41=0.041 (8%),
        5.2e+03 samples/s, ETA 1m32s

    (one line), each term weighted with its share of the loss (:func:`term_texts`).

    The ETA is the mean time per step so far in this process times the steps left.

    Args:
        total_steps: the run's optimizer steps.
        first_step: the step this process started from (a resumed run's checkpoint step).
        enabled: print at all (``train.progress`` on the main process); off on a terminal,
            where the tqdm bar shows the same.
        every_s: the least seconds between two lines (0: every step record).
    """

    def __init__(self, total_steps: int, first_step: int, *, enabled: bool, every_s: float):
        self.total_steps, self.first_step = total_steps, first_step
        self.enabled = enabled and not sys.stderr.isatty()
        self.every_s = every_s
        self.started = time.perf_counter()
        self.last_line: float | None = None

    def show(self, description: str, record: Mapping[str, Any]) -> None:
        """Print the line of a step record (keys as in the module docstring) when due."""
        now = time.perf_counter()
        due = self.last_line is None or now - self.last_line >= self.every_s
        if not self.enabled or not due:
            return
        self.last_line = now
        step = record["step"]
        shown = {"loss": f"{record['loss']:.4g}", **term_texts(record)}
        values = " ".join(f"{name}={text}" for name, text in shown.items())
        per_step = (now - self.started) / max(step - self.first_step, 1)
        eta = _duration(per_step * (self.total_steps - step))
        print(
            f"{description} step {step}/{self.total_steps}: {values}, "
            f"{record['samples_per_s']:.3g} samples/s, ETA {eta}",
            file=sys.stderr,
            flush=True,
        )
