"""What a head is and how it is fitted: HeadArch (the model and its loss) and HeadConfig (that, plus
how stage 2 trains it). Frozen, checked when made (featcache.options), importable without torch:
the command line builds its options from these fields.

The choices of fusion, classifier and loss are the registries' keys (heads.fusion, heads.losses),
read when a config is checked (a new fusion is one class and one registry entry); the help texts
name the built-in ones, so `--help` does not load torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from featcache.options import check_fields, option



def fusion_names() -> tuple[str, ...]:
    from heads.fusion import FUSIONS  # torch: only when a config is checked

    return tuple(FUSIONS)


def _classifiers() -> tuple[str, ...]:
    from heads.fusion import CLASSIFIERS

    return tuple(CLASSIFIERS)


def _losses() -> tuple[str, ...]:
    from heads.losses import LOSSES

    return tuple(LOSSES)


DEFAULT_EPOCHS = 8
STEP_BUDGET = 128  # optimizer steps of the default schedule: 8 epochs of 8,000 rows at batch 512


@dataclass(frozen=True)
class HeadArch:
    """The head's model and loss: what stage 2 and end-to-end fine-tuning share."""
    fusion: str = option("late", "How the encoders' vectors are fused: late (the best measured), concat, gated, "
                         "bilinear, attention or concat_relu; one encoder: an MLP.", choices=fusion_names)
    classifier: str = option("mlp", "The classifier on the fused vector: mlp or linear (the study's).",
                             choices=_classifiers)
    loss: str = option("bce", "Training loss: bce, asl or focal.", choices=_losses)
    width: int = option(512, "MLP hidden width; the common width of the gated/bilinear/attention fusions.",
                        range=(1, 65536))
    dropout: float = option(0.5, "Dropout on the fused input and the hidden layer.", range=(0.0, 0.99))

    def __post_init__(self):
        check_fields(self)


@dataclass(frozen=True)
class HeadConfig(HeadArch):
    lr: float = option(3e-3, "AdamW learning rate.", range=(1e-9, 10.0))
    weight_decay: float = option(0.05, "AdamW weight decay.", range=(0.0, 10.0))
    epochs: int = option(DEFAULT_EPOCHS, "The cosine schedule's length in epochs; early stopping on validation mAP.",
                         range=(1, 100000))
    # A head converges in a number of steps, not of passes: 8 epochs of 8,000 rows are 128 steps; on
    # 24,000 rows the budget ends at 2.7 epochs. A schedule asked for (other epochs) runs as asked.
    max_steps: int | None = option(None, f"Cap on optimizer steps (0: none; default: {STEP_BUDGET} with the default "
                                         f"epochs, none when --epochs is given).", range=(0, None), cli=False)
    # ...and the default schedule is stretched to at least this many: on a small dataset 8 epochs are
    # a handful of steps, too few for the gated/bilinear/attention fusions to converge.
    min_steps: int = option(64, "Least optimizer steps of the default schedule.", range=(0, None), cli=False)
    batch_size: int = option(512, "Rows per step.", range=(1, 65536))
    patience: int = option(3, "Epochs without a better validation score before stopping.", range=(1, 100000))
    seed: int = option(0, "The head's seed: initialisation, row order, dropout.", range=(0, None))
    # One thread: while another process uses the second core, two OpenMP threads spin-wait and
    # run ~8x slower than one. Studies run one fit per core instead (featcache.stage2).
    threads: int = option(1, "torch threads per fit.", range=(1, 1024), cli=False)
    # bf16 autocast: None = whichever of bf16 and fp32 measures faster on this machine, resolved
    # when the head is built, so a saved head records what it trained in.
    bf16: bool | None = option(None, "bf16 autocast (default: whichever measures faster here).", cli=False)

    def step_cap(self) -> int:
        """The step budget: max_steps when given, else STEP_BUDGET for the default schedule only."""
        if self.max_steps is not None:
            return self.max_steps
        return STEP_BUDGET if self.epochs == DEFAULT_EPOCHS else 0

    def arch(self) -> HeadArch:
        return HeadArch(**{k: getattr(self, k) for k in HeadArch.__dataclass_fields__})
