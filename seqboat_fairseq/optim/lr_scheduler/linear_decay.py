"""``--lr-scheduler linear_decay``: (polynomial) warmup then linear decay, as used by SeqBoat/MEGA.

A port of the upstream SeqBoat/MEGA ``linear_decay_schedule.py`` to fairseq 0.12's
dataclass-based registry.
"""

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import List

from fairseq.dataclass import FairseqDataclass
from fairseq.optim.lr_scheduler import FairseqLRScheduler, register_lr_scheduler
from omegaconf import II


@dataclass
class LinearDecayLRScheduleConfig(FairseqDataclass):
    warmup_updates: int = field(
        default=0,
        metadata={"help": "warmup the learning rate for the first N updates"},
    )
    warmup_power: int = field(
        default=1,
        metadata={"help": "the power of warmup (1: linear warmup)"},
    )
    warmup_init_lr: float = field(
        default=-1,
        metadata={
            "help": "initial learning rate during warmup phase; default is 0 with"
            " warmup, --lr without"
        },
    )
    end_learning_rate: float = field(
        default=0.0,
        metadata={"help": "learning rate to decay to"},
    )
    total_num_update: int = field(
        default=II("optimization.max_update"),
        metadata={
            "help": "total number of updates over which to decay learning rate"
            " (default: --max-update)"
        },
    )
    lr: List[float] = II("optimization.lr")


@register_lr_scheduler("linear_decay", dataclass=LinearDecayLRScheduleConfig)
class LinearDecayLRSchedule(FairseqLRScheduler):
    """Warm up the LR polynomially, then decay it linearly to ``--end-learning-rate``.

    With peak ``lr = --lr``, ``W = --warmup-updates``, ``lr0 = --warmup-init-lr``,
    ``rho = --warmup-power``, ``lr_end = --end-learning-rate`` and
    ``T = --total-num-update`` (default: ``--max-update``), the LR after ``u`` updates is::

      u <= W (W > 0):  lr0 + u**rho * (lr - lr0) / W**rho
      u >= T:          lr_end
      otherwise:       lr_end + (T - u) * (lr - lr_end) / (T - W)

    Before the first update the LR is ``lr0`` (``lr`` when ``W == 0``); epoch
    boundaries do not change it.
    """

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        # fairseq's argparse path drops the default of an option that interpolates another one and
        # then passes ``null``, which omegaconf refuses for an int (fairseq's own polynomial_decay
        # fails that way without --total-num-update). Keep the interpolation instead, so that the
        # command line resolves it to --max-update as fairseq-hydra-train does.
        parser.set_defaults(total_num_update="${optimization.max_update}")

    def __init__(self, cfg: LinearDecayLRScheduleConfig, optimizer):
        super().__init__(cfg, optimizer)
        if isinstance(cfg.lr, Collection) and len(cfg.lr) > 1:
            raise ValueError(
                "Cannot use a fixed learning rate schedule with linear_decay."
                " Consider --lr-scheduler=fixed instead."
            )
        self.peak_lr = cfg.lr[0] if isinstance(cfg.lr, Collection) else cfg.lr
        warmup = cfg.warmup_updates
        if warmup < 0:
            raise ValueError(f"--warmup-updates cannot be negative (got {warmup})")
        if warmup == 0:
            if cfg.warmup_init_lr >= 0:
                raise ValueError(
                    "--warmup-init-lr has no effect without --warmup-updates;"
                    f" got --warmup-init-lr={cfg.warmup_init_lr} with --warmup-updates=0"
                )
            self.warmup_init_lr = self.peak_lr
        else:
            if cfg.warmup_init_lr >= self.peak_lr:
                raise ValueError(
                    f"--warmup-init-lr ({cfg.warmup_init_lr}) must be smaller than"
                    f" --lr ({self.peak_lr}) when --warmup-updates > 0"
                )
            self.warmup_init_lr = max(cfg.warmup_init_lr, 0.0)
        if cfg.total_num_update is None or cfg.total_num_update <= 0:
            raise ValueError(
                "linear_decay needs the number of updates to decay over: set --max-update"
                " (or --total-num-update, which defaults to --max-update)"
            )
        if cfg.total_num_update <= warmup:
            raise ValueError(
                f"--total-num-update ({cfg.total_num_update}) must be larger than"
                f" --warmup-updates ({warmup})"
            )

        self.warmup_updates = warmup
        self.warmup_power = cfg.warmup_power
        self.end_learning_rate = cfg.end_learning_rate
        self.total_num_update = cfg.total_num_update
        # per unit of u**rho during warmup, and per remaining update during decay
        self.warmup_factor = (
            (self.peak_lr - self.warmup_init_lr) / warmup**self.warmup_power if warmup > 0 else 0.0
        )
        self.decay_factor = (self.peak_lr - self.end_learning_rate) / (self.total_num_update - warmup)

        # initial learning rate
        self.lr = self.warmup_init_lr
        self.optimizer.set_lr(self.lr)

    def lr_at(self, num_updates):
        """The learning rate after ``num_updates`` updates (see the class docstring)."""
        if self.warmup_updates > 0 and num_updates <= self.warmup_updates:
            return self.warmup_init_lr + num_updates**self.warmup_power * self.warmup_factor
        if num_updates >= self.total_num_update:
            return self.end_learning_rate
        return self.end_learning_rate + (self.total_num_update - num_updates) * self.decay_factor

    def load_state_dict(self, state_dict):
        """Load an LR scheduler state dict.

        Also accepts upstream SeqBoat/MEGA's ``{"lr": ...}``: the LR itself is a function
        of the update count, which the trainer passes to :meth:`step_update` after loading.
        """
        self.best = state_dict.get("best")

    def step_begin_epoch(self, epoch):
        """Update the learning rate at the beginning of the given epoch."""
        # we don't change the learning rate at epoch boundaries
        return self.optimizer.get_lr()

    def step(self, epoch, val_loss=None):
        """Update the learning rate at the end of the given epoch."""
        super().step(epoch, val_loss)
        # we don't change the learning rate at epoch boundaries
        return self.optimizer.get_lr()

    def step_update(self, num_updates):
        """Update the learning rate after each update."""
        self.lr = self.lr_at(num_updates)
        self.optimizer.set_lr(self.lr)
        return self.lr
