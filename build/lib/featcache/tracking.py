"""Optional run tracking in TensorBoard: `finetune` and `ablate` with `--track tensorboard`, or
with FEATCACHE_TRACK=tensorboard in the environment.

    with track(kind, run_dir / "tensorboard") as tb:       # kind None: nothing is written
        tb.scalars({"train/loss": 0.31}, step)
        tb.hparams({"lr": 1e-4, "fusion": "late"}, {"sample_f1": 0.88})

Event files go under the run (`tensorboard --logdir runs` shows every tracked run); the
hyper-parameters with the final metrics make the runs comparable in TensorBoard's HParams tab.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

KINDS = ("tensorboard",)
ENV = "FEATCACHE_TRACK"


def tracking_kind(option: str | None) -> str | None:
    """The option, or FEATCACHE_TRACK; None (or "none") is off. ValueError for an unknown name."""
    kind = option if option is not None else os.environ.get(ENV) or None
    if kind in (None, "none", ""):
        return None
    if kind not in KINDS:
        raise ValueError(f"--track {kind!r} ({ENV}): choose from {', '.join(KINDS)} or none")
    return kind


class Tracker:
    """A TensorBoard writer (torch.utils.tensorboard) for one run."""

    def __init__(self, log_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch's writer needs the tensorboard package
            raise ValueError("--track tensorboard needs the tensorboard package: pip install 'featcache[track]' "
                             "(./setup.sh installs it)") from None
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(str(self.log_dir))

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            if isinstance(value, (int, float)) and value == value:  # numbers only; NaN would draw nothing
                self.writer.add_scalar(tag, value, step)

    def hparams(self, params: dict, metrics: dict[str, float]) -> None:
        """The run's settings (numbers and strings; others as text) beside its final metrics."""
        plain = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()}
        self.writer.add_hparams(plain, {f"final/{k}": v for k, v in metrics.items()}, run_name=".")

    def close(self) -> None:
        self.writer.close()


@contextlib.contextmanager
def track(kind: str | None, log_dir: Path):
    """A Tracker for `kind` (see tracking_kind), or None when tracking is off."""
    if kind is None:
        yield None
        return
    tracker = Tracker(log_dir)
    try:
        yield tracker
    finally:
        tracker.close()
