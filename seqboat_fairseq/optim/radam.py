"""``--optimizer radam``: rectified Adam with decoupled weight decay, as used by SeqBoat/MEGA.

A thin fairseq wrapper around ``torch.optim.RAdam(decoupled_weight_decay=True)``, with the option
names of the upstream SeqBoat/MEGA ``fairseq/optim/radam.py`` (``--radam-betas``,
``--radam-eps``, ``--weight-decay``), so upstream recipes run unchanged.

With gradient ``g`` at step ``t`` (1-based), learning rate ``lr`` and weight decay ``wd``::

    m = beta1 * m + (1 - beta1) * g;   v = beta2 * v + (1 - beta2) * g**2
    rho_inf = 2 / (1 - beta2) - 1;     rho_t = rho_inf - 2 * t * beta2**t / (1 - beta2**t)
    p = p * (1 - lr * wd)                                      # decoupled ("AdamW" style)
    rho_t > 5:  p = p - lr * rect(rho_t) * sqrt(1 - beta2**t) / (1 - beta1**t) * m / (sqrt(v) + eps)
    otherwise:  p = p - lr / (1 - beta1**t) * m                # bias-corrected SGD with momentum

which is upstream's RAdam with ``degenerated_to_sgd=True``: the update equals the plugin's former
hand-written implementation (kept as the reference in ``tests/test_optim.py``) except when
``rho_t`` is exactly 5, which upstream sent to the rectified branch.

Mixed precision: ``--fp16`` / ``--bf16`` / ``--amp`` keep fp32 master weights, so the optimizer
runs in fp32. ``--memory-efficient-fp16`` / ``--memory-efficient-bf16`` would hand it fp16/bf16
weights, and torch's RAdam keeps its moments in the weights' dtype; ``radam`` therefore does not
declare ``supports_memory_efficient_fp16`` and fairseq refuses that combination
(``Unsupported optimizer: FairseqRAdam``).
"""

import ast
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import List

import torch
from fairseq.dataclass import FairseqDataclass
from fairseq.optim import FairseqOptimizer, register_optimizer
from omegaconf import II


@dataclass
class FairseqRAdamConfig(FairseqDataclass):
    radam_betas: str = field(
        default="(0.9, 0.999)", metadata={"help": "betas for RAdam optimizer"}
    )
    radam_eps: float = field(
        default=1e-8, metadata={"help": "epsilon for RAdam optimizer"}
    )
    weight_decay: float = field(
        default=0.0, metadata={"help": "decoupled weight decay"}
    )
    lr: List[float] = II("optimization.lr")


@register_optimizer("radam", dataclass=FairseqRAdamConfig)
class FairseqRAdam(FairseqOptimizer):
    """``torch.optim.RAdam`` with decoupled weight decay, for fairseq (see the module docstring)."""

    def __init__(self, cfg: FairseqRAdamConfig, params):
        super().__init__(cfg)
        self._optimizer = torch.optim.RAdam(params, **self.optimizer_config)

    @property
    def optimizer_config(self):
        """
        Return a kwarg dictionary that will be used to override optimizer
        args stored in checkpoints. This allows us to load a checkpoint and
        resume training using a different set of optimizer args, e.g., with a
        different learning rate.
        """
        betas = self.cfg.radam_betas
        if isinstance(betas, str):
            betas = ast.literal_eval(betas)
        return {
            "lr": self.cfg.lr[0] if isinstance(self.cfg.lr, Collection) else self.cfg.lr,
            "betas": tuple(betas),
            "eps": self.cfg.radam_eps,
            "weight_decay": self.cfg.weight_decay,
            "decoupled_weight_decay": True,
        }

    @property
    def supports_flat_params(self):
        return True

    def load_state_dict(self, state_dict, optimizer_overrides=None):
        """Load an optimizer state dict, including those of the former implementation and upstream.

        Their param groups carry no ``decoupled_weight_decay``, which torch would default to False
        (coupled L2 decay); their integer ``step`` counters are converted by torch itself.
        """
        super().load_state_dict(state_dict, optimizer_overrides)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
