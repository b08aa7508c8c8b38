"""``--optimizer radam``: rectified Adam with decoupled weight decay, as used by SeqBoat/MEGA.

A port of the upstream SeqBoat/MEGA ``fairseq/optim/radam.py`` (RAdam with
``degenerated_to_sgd=True``) to fairseq 0.12's dataclass-based registry.
"""

import ast
import math
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import List

import torch
from fairseq.dataclass import FairseqDataclass
from fairseq.optim import FairseqOptimizer, register_optimizer
from omegaconf import II

_LOW_PRECISION = (torch.float16, torch.bfloat16)


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
    """RAdam optimizer for fairseq (see :class:`RAdam`).

    Like fairseq's ``adam``, the weight decay is decoupled ("AdamW" style).
    """

    def __init__(self, cfg: FairseqRAdamConfig, params):
        super().__init__(cfg)
        self._optimizer = RAdam(params, **self.optimizer_config)

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
        }


class RAdam(torch.optim.Optimizer):
    r"""Rectified Adam (`On the Variance of the Adaptive Learning Rate and Beyond`_),
    exactly as in the SeqBoat/MEGA upstream (``degenerated_to_sgd=True``).

    With gradient ``g`` at step ``t`` (1-based), learning rate ``lr`` and decoupled
    weight decay ``wd``::

        m   = beta1 * m + (1 - beta1) * g
        v   = beta2 * v + (1 - beta2) * g**2
        rho_inf = 2 / (1 - beta2) - 1
        rho_t   = rho_inf - 2 * t * beta2**t / (1 - beta2**t)

        if rho_t >= 5:   # variance is tractable: rectified adaptive step
            r = sqrt((1 - beta2**t) * (rho_t - 4) * (rho_t - 2) * rho_inf
                     / ((rho_inf - 4) * rho_t * (rho_inf - 2))) / (1 - beta1**t)
            p = p * (1 - lr * wd)
            p = p - lr * r * m / (sqrt(v) + eps)
        else:            # too few steps: bias-corrected SGD with momentum
            r = 1 / (1 - beta1**t)
            p = p * (1 - lr * wd)
            p = p - lr * r * m

    ``m`` and ``v`` are the raw (not bias-corrected) moments: the bias correction of
    ``v`` is folded into ``r`` and ``eps`` is added to the raw ``sqrt(v)``, not to the
    bias-corrected ``sqrt(v / (1 - beta2**t))`` as in Adam. PyTorch's
    ``torch.optim.RAdam(decoupled_weight_decay=True)`` places ``eps`` the same way
    (checked against torch 2.13 in ``tests/test_optim.py``); the two differ only when
    ``rho_t`` is exactly 5, where torch takes the SGD branch.

    fp16/bf16 parameters are updated in fp32 (fp32 moments, fp32 copy of the
    parameter written back), like fairseq's Adam.

    .. _On the Variance of the Adaptive Learning Rate and Beyond:
        https://arxiv.org/abs/1908.03265
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if eps < 0.0:
            raise ValueError(f"Invalid epsilon value: {eps}")
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {beta}")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)

    @property
    def supports_memory_efficient_fp16(self):
        return True

    @property
    def supports_flat_params(self):
        return True

    @staticmethod
    def rectified_step_size(step, beta1, beta2):
        """Returns ``(rho_t, r)`` for 1-based ``step`` (see the class docstring)."""
        beta2_t = beta2**step
        rho_inf = 2.0 / (1.0 - beta2) - 1.0
        rho_t = rho_inf - 2.0 * step * beta2_t / (1.0 - beta2_t)
        bias_correction1 = 1.0 - beta1**step
        if rho_t >= 5:
            # same operation order as upstream, for bitwise-identical updates
            rect = (1.0 - beta2_t) * (rho_t - 4) / (rho_inf - 4) * (rho_t - 2) / rho_t * rho_inf / (rho_inf - 2)
            return rho_t, math.sqrt(rect) / bias_correction1
        return rho_t, 1.0 / bias_correction1

    @torch.no_grad()
    def step(self, closure=None):
        """Performs a single optimization step.

        Args:
            closure (callable, optional): A closure that reevaluates the model
                and returns the loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, weight_decay = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("RAdam does not support sparse gradients")
                if grad.dtype in _LOW_PRECISION:
                    grad = grad.float()

                p_data_fp32 = p.data
                if p.data.dtype in _LOW_PRECISION:
                    p_data_fp32 = p_data_fp32.float()

                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p_data_fp32)
                    state["exp_avg_sq"] = torch.zeros_like(p_data_fp32)
                else:
                    state["exp_avg"] = state["exp_avg"].to(p_data_fp32)
                    state["exp_avg_sq"] = state["exp_avg_sq"].to(p_data_fp32)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]

                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                state["step"] += 1

                rho_t, step_size = self.rectified_step_size(state["step"], beta1, beta2)
                if weight_decay != 0:
                    p_data_fp32.mul_(1 - lr * weight_decay)
                if rho_t >= 5:
                    denom = exp_avg_sq.sqrt().add_(group["eps"])
                    p_data_fp32.addcdiv_(exp_avg, denom, value=-step_size * lr)
                else:
                    p_data_fp32.add_(exp_avg, alpha=-step_size * lr)

                if p.data.dtype in _LOW_PRECISION:
                    p.data.copy_(p_data_fp32)

        return loss
