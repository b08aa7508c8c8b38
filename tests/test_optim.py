"""``--optimizer radam`` and ``--lr-scheduler linear_decay``: registration, command line,
schedule values (``--total-num-update`` defaulting to ``--max-update``), and torch's RAdam behind
``--optimizer radam`` against the plugin's former hand-written RAdam (kept below as the reference)
and an independent re-implementation of the formulas."""

import io
import math

import pytest
import torch
from fairseq import optim as fairseq_optim
from fairseq.optim import lr_scheduler as fairseq_lr_scheduler
from omegaconf import OmegaConf

import seqboat_fairseq.optim  # noqa: F401  (registers radam and linear_decay)
from conftest import PLUGIN_DIR, assert_close
from seqboat_fairseq.optim.lr_scheduler.linear_decay import LinearDecayLRSchedule
from seqboat_fairseq.optim.radam import FairseqRAdam

PEAK_LR, WARMUP, TOTAL, INIT_LR = 5e-3, 10, 50, 2e-3


def build_radam(params, lr=PEAK_LR, **options):
    cfg = OmegaConf.create({"_name": "radam", "lr": [lr], **options})
    return fairseq_optim.build_optimizer(cfg, list(params))


def build_linear_decay(lr=PEAK_LR, **options):
    """A ``linear_decay`` scheduler (driving a RAdam optimizer) built through fairseq's registry."""
    options.setdefault("total_num_update", TOTAL)  # no parent config here to interpolate --max-update
    lrs = lr if isinstance(lr, list) else [lr]
    optimizer = build_radam([torch.nn.Parameter(torch.zeros(2))], lr=lrs[0])
    cfg = OmegaConf.create({"_name": "linear_decay", "lr": lrs, **options})
    return fairseq_lr_scheduler.build_lr_scheduler(cfg, optimizer), optimizer


def expected_lr(u, lr, warmup, total, init_lr, end_lr, power):
    if warmup > 0 and u <= warmup:
        return init_lr + (lr - init_lr) * (u / warmup) ** power
    if u >= total:
        return end_lr
    return lr - (lr - end_lr) * (u - warmup) / (total - warmup)


def test_importing_the_package_registers_optimizer_and_scheduler():
    assert fairseq_optim.OPTIMIZER_REGISTRY["radam"] is FairseqRAdam
    assert "radam" in fairseq_optim.OPTIMIZER_DATACLASS_REGISTRY
    assert fairseq_lr_scheduler.LR_SCHEDULER_REGISTRY["linear_decay"] is LinearDecayLRSchedule
    assert "linear_decay" in fairseq_lr_scheduler.LR_SCHEDULER_DATACLASS_REGISTRY
    optimizer = build_radam([torch.nn.Parameter(torch.zeros(2))])
    assert type(optimizer.optimizer) is torch.optim.RAdam, "a wrapper around torch's RAdam"
    assert optimizer.supports_flat_params
    # torch's RAdam keeps its moments in the weights' dtype: no --memory-efficient-fp16/bf16
    assert not optimizer.supports_memory_efficient_fp16


def test_command_line_options_reach_optimizer_and_scheduler(tmp_path):
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        str(tmp_path), "--user-dir", PLUGIN_DIR, "--task", "language_modeling", "--arch", "transformer_lm",
        "--optimizer", "radam", "--radam-betas", "(0.9, 0.98)", "--radam-eps", "1e-6", "--weight-decay", "0.01",
        "--lr", "5e-3", "--lr-scheduler", "linear_decay", "--warmup-updates", "10", "--warmup-power", "2",
        "--warmup-init-lr", "1e-7", "--end-learning-rate", "1e-5", "--total-num-update", "100"])
    cfg = convert_namespace_to_omegaconf(args)

    optimizer = fairseq_optim.build_optimizer(cfg.optimizer, [torch.nn.Parameter(torch.zeros(2))])
    scheduler = fairseq_lr_scheduler.build_lr_scheduler(cfg.lr_scheduler, optimizer)
    assert isinstance(optimizer, FairseqRAdam) and isinstance(scheduler, LinearDecayLRSchedule)
    defaults = optimizer.optimizer.defaults
    assert {k: defaults[k] for k in ("lr", "betas", "eps", "weight_decay", "decoupled_weight_decay")} == {
        "lr": 5e-3, "betas": (0.9, 0.98), "eps": 1e-6, "weight_decay": 0.01, "decoupled_weight_decay": True}
    assert cfg.lr_scheduler.warmup_power == 2 and isinstance(cfg.lr_scheduler.warmup_power, int)
    assert optimizer.get_lr() == 1e-7
    assert scheduler.step_update(5) == pytest.approx(1e-7 + (5e-3 - 1e-7) * 0.25, rel=1e-12)
    assert scheduler.step_update(55) == pytest.approx(1e-5 + (5e-3 - 1e-5) * 45 / 90, rel=1e-12)
    assert scheduler.step_update(100) == 1e-5


@pytest.mark.parametrize("end_lr", [0.0, 1e-4])
@pytest.mark.parametrize("power", [1, 2])
def test_linear_decay_values(power, end_lr):
    scheduler, optimizer = build_linear_decay(
        warmup_updates=WARMUP, warmup_init_lr=INIT_LR, warmup_power=power, end_learning_rate=end_lr,
        total_num_update=TOTAL)
    assert optimizer.get_lr() == INIT_LR  # before the first update

    # hand-computed landmarks
    landmarks = {0: INIT_LR, 5: INIT_LR + (PEAK_LR - INIT_LR) * 0.5**power, WARMUP: PEAK_LR,
                 (WARMUP + TOTAL) // 2: (PEAK_LR + end_lr) / 2, TOTAL: end_lr, TOTAL + 5: end_lr}
    for u, lr in landmarks.items():
        assert scheduler.step_update(u) == pytest.approx(lr, rel=1e-12, abs=1e-15), u
        assert optimizer.get_lr() == pytest.approx(lr, rel=1e-12, abs=1e-15), u

    for u in range(TOTAL + 6):
        lr = expected_lr(u, PEAK_LR, WARMUP, TOTAL, INIT_LR, end_lr, power)
        assert scheduler.step_update(u) == pytest.approx(lr, rel=1e-12, abs=1e-15), u


def test_epoch_boundaries_keep_the_lr():
    scheduler, optimizer = build_linear_decay(warmup_updates=WARMUP, total_num_update=TOTAL)
    lr = scheduler.step_update(20)
    assert scheduler.step_begin_epoch(2) == lr and optimizer.get_lr() == lr
    assert scheduler.step(2, val_loss=1.5) == lr and optimizer.get_lr() == lr
    assert scheduler.best == 1.5


def test_warmup_init_lr_defaults():
    # with warmup, the default --warmup-init-lr (-1) starts from 0
    scheduler, optimizer = build_linear_decay(warmup_updates=WARMUP, total_num_update=TOTAL)
    assert optimizer.get_lr() == 0.0
    assert scheduler.step_update(WARMUP // 2) == pytest.approx(PEAK_LR / 2, rel=1e-12)

    # without warmup, it starts at --lr and decays linearly from update 0
    scheduler, optimizer = build_linear_decay(end_learning_rate=1e-4, total_num_update=TOTAL)
    assert optimizer.get_lr() == PEAK_LR
    assert scheduler.step_update(0) == pytest.approx(PEAK_LR, rel=1e-12)
    assert scheduler.step_update(TOTAL // 2) == pytest.approx((PEAK_LR + 1e-4) / 2, rel=1e-12)
    assert scheduler.step_update(TOTAL) == 1e-4


@pytest.mark.parametrize("options, lr, message", [
    ({"warmup_updates": 0, "warmup_init_lr": 1e-4}, PEAK_LR, r"--warmup-init-lr.*--warmup-updates"),
    ({"warmup_updates": WARMUP, "warmup_init_lr": PEAK_LR}, PEAK_LR, r"--warmup-init-lr .* smaller than --lr"),
    ({"warmup_updates": -1}, PEAK_LR, r"--warmup-updates cannot be negative"),
    ({"warmup_updates": TOTAL, "total_num_update": TOTAL}, PEAK_LR, r"--total-num-update \(50\) must be larger"),
    ({}, [PEAK_LR, 1e-3], r"linear_decay"),
])
def test_linear_decay_rejects_invalid_options(options, lr, message):
    with pytest.raises(ValueError, match=message):
        build_linear_decay(lr=lr, **options)


def test_linear_decay_state_dict():
    scheduler, _ = build_linear_decay(warmup_updates=WARMUP, total_num_update=TOTAL)
    scheduler.step(1, val_loss=2.0)
    restored, _ = build_linear_decay(warmup_updates=WARMUP, total_num_update=TOTAL)
    restored.load_state_dict(scheduler.state_dict())
    assert restored.best == 2.0
    restored.load_state_dict({"lr": 1e-3})  # upstream SeqBoat/MEGA checkpoints
    assert restored.best is None



def build_from_command_line(tmp_path, *scheduler_args):
    """The optimizer and ``linear_decay`` scheduler that fairseq-train builds from these options."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        str(tmp_path), "--user-dir", PLUGIN_DIR, "--task", "language_modeling", "--arch", "transformer_lm",
        "--optimizer", "radam", "--lr", str(PEAK_LR), "--lr-scheduler", "linear_decay",
        "--warmup-updates", str(WARMUP), *scheduler_args])
    cfg = convert_namespace_to_omegaconf(args)
    optimizer = fairseq_optim.build_optimizer(cfg.optimizer, [torch.nn.Parameter(torch.zeros(2))])
    return fairseq_lr_scheduler.build_lr_scheduler(cfg.lr_scheduler, optimizer)


def test_total_num_update_defaults_to_max_update(tmp_path):
    # forgetting --total-num-update used to mean 1,000,000 updates: an LR that never decays
    scheduler = build_from_command_line(tmp_path, "--max-update", "40")
    assert scheduler.total_num_update == 40
    assert scheduler.step_update(25) == pytest.approx(PEAK_LR / 2, rel=1e-12)
    assert scheduler.step_update(40) == 0.0

    # an explicit --total-num-update still wins
    scheduler = build_from_command_line(tmp_path, "--max-update", "40", "--total-num-update", "70")
    assert scheduler.total_num_update == 70
    assert scheduler.step_update(40) == pytest.approx(PEAK_LR * 30 / 60, rel=1e-12)


def test_total_num_update_defaults_to_max_update_in_a_hydra_config():
    """What fairseq-hydra-train composes: the dataclass default interpolates optimization.max_update."""
    cfg = OmegaConf.create({"optimization": {"max_update": 30, "lr": [PEAK_LR]},
                            "lr_scheduler": {"_name": "linear_decay", "warmup_updates": WARMUP}})
    optimizer = build_radam([torch.nn.Parameter(torch.zeros(2))])
    scheduler = fairseq_lr_scheduler.build_lr_scheduler(cfg.lr_scheduler, optimizer)
    assert scheduler.total_num_update == 30
    assert scheduler.step_update(20) == pytest.approx(PEAK_LR / 2, rel=1e-12)


def test_linear_decay_without_max_update_or_total_num_update_is_refused(tmp_path):
    # --max-update 0 (fairseq's default: no limit) leaves nothing to decay over
    with pytest.raises(ValueError, match=r"linear_decay needs .* --max-update .*--total-num-update"):
        build_from_command_line(tmp_path)


class LegacyRAdam(torch.optim.Optimizer):
    """The plugin's former hand-written ``radam`` (seqboat_fairseq/optim/radam.py before it wrapped
    torch's), kept verbatim as the reference: upstream SeqBoat/MEGA's RAdam with
    ``degenerated_to_sgd=True``, decoupled weight decay, fp32 math for fp16/bf16 weights."""

    _LOW_PRECISION = (torch.float16, torch.bfloat16)

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)

    @staticmethod
    def rectified_step_size(step, beta1, beta2):
        beta2_t = beta2**step
        rho_inf = 2.0 / (1.0 - beta2) - 1.0
        rho_t = rho_inf - 2.0 * step * beta2_t / (1.0 - beta2_t)
        bias_correction1 = 1.0 - beta1**step
        if rho_t >= 5:
            rect = (1.0 - beta2_t) * (rho_t - 4) / (rho_inf - 4) * (rho_t - 2) / rho_t * rho_inf / (rho_inf - 2)
            return rho_t, math.sqrt(rect) / bias_correction1
        return rho_t, 1.0 / bias_correction1

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, weight_decay = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.dtype in self._LOW_PRECISION:
                    grad = grad.float()
                p_data_fp32 = p.data
                if p.data.dtype in self._LOW_PRECISION:
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
                if p.data.dtype in self._LOW_PRECISION:
                    p.data.copy_(p_data_fp32)


def reference_radam(param, grads, lr, betas, eps, weight_decay):
    """Straightforward RAdam (upstream SeqBoat/MEGA, degenerated_to_sgd=True); returns params and rho_t per step."""
    beta1, beta2 = betas
    p, m, v = param.clone(), torch.zeros_like(param), torch.zeros_like(param)
    rho_inf = 2 / (1 - beta2) - 1
    params, rhos = [], []
    for t, g in enumerate(grads, start=1):
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        rho_t = rho_inf - 2 * t * beta2**t / (1 - beta2**t)
        p = p * (1 - lr * weight_decay)
        if rho_t >= 5:
            r = math.sqrt((1 - beta2**t) * (rho_t - 4) * (rho_t - 2) * rho_inf
                          / ((rho_inf - 4) * rho_t * (rho_inf - 2))) / (1 - beta1**t)
            p = p - lr * r * m / (v.sqrt() + eps)
        else:
            p = p - lr / (1 - beta1**t) * m
        params.append(p)
        rhos.append(rho_t)
    return params, rhos


HYPER = {"lr": 1e-2, "betas": (0.9, 0.98), "eps": 1e-3, "weight_decay": 0.1}


def radam_options(lr, betas, eps, weight_decay):
    """``build_radam`` keyword arguments (fairseq's option names) for these hyperparameters."""
    return {"lr": lr, "radam_betas": str(betas), "radam_eps": eps, "weight_decay": weight_decay}


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-13), (torch.float32, 2e-6)])
@pytest.mark.parametrize("hyper", [HYPER, {"lr": 3e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}])
def test_radam_update_equals_the_former_implementation(hyper, dtype, atol):
    """Twelve steps on three parameters (one of them without a gradient every third step): the
    SGD steps (rho_t < 5) and the rectified ones, with and without weight decay."""
    shapes = [(4, 6), (7,), (3, 2, 2)]
    starts = [torch.randn(shape, dtype=dtype) for shape in shapes]
    ours = [torch.nn.Parameter(s.clone()) for s in starts]
    theirs = [torch.nn.Parameter(s.clone()) for s in starts]
    optimizer = build_radam(ours, **radam_options(**hyper))
    legacy = LegacyRAdam(theirs, **hyper)
    beta1, beta2 = hyper["betas"]
    rhos = [LegacyRAdam.rectified_step_size(t, beta1, beta2)[0] for t in range(1, 13)]
    assert min(rhos) < 5 < max(rhos), "both the SGD and the rectified branch are exercised"

    for step in range(1, 13):
        for i, (a, b) in enumerate(zip(ours, theirs)):
            grad = None if (i == 1 and step % 3 == 0) else torch.randn_like(a) * 0.05
            a.grad = None if grad is None else grad.clone()
            b.grad = None if grad is None else grad.clone()
        optimizer.step()
        legacy.step()
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert a.dtype == dtype
            assert_close(f"step {step}, param {i}", a.detach(), b.detach(), atol=atol)
    for a, b in zip(ours, theirs):
        state, legacy_state = optimizer.optimizer.state[a], legacy.state[b]
        assert int(state["step"]) == legacy_state["step"]
        for key in ("exp_avg", "exp_avg_sq"):
            assert_close(key, state[key], legacy_state[key], atol=atol)


def test_radam_matches_reference_in_both_branches():
    start = torch.randn(4, 6, dtype=torch.float64)
    grads = [torch.randn(4, 6, dtype=torch.float64) * 0.05 for _ in range(10)]
    expected, rhos = reference_radam(start, grads, **HYPER)
    assert min(rhos) < 5 <= max(rhos), "both the SGD and the rectified branch are exercised"

    param = torch.nn.Parameter(start.clone())
    optimizer = build_radam([param], **radam_options(**HYPER))
    for step, (grad, want) in enumerate(zip(grads, expected), start=1):
        param.grad = grad.clone()
        optimizer.step()
        assert_close(f"step {step}", param.detach(), want, atol=1e-7)
    assert optimizer.optimizer.state[param]["step"] == len(grads)


def test_radam_resumes_from_a_state_of_the_former_implementation():
    """Checkpoints written before the switch (integer steps, no ``decoupled_weight_decay`` in the
    param groups, which torch would default to coupled L2 decay) continue exactly."""
    start = torch.randn(16, dtype=torch.float64)
    grads = [torch.randn(16, dtype=torch.float64) * 0.05 for _ in range(10)]
    old = torch.nn.Parameter(start.clone())
    legacy = LegacyRAdam([old], **HYPER)
    for grad in grads[:5]:
        old.grad = grad.clone()
        legacy.step()
    buffer = io.BytesIO()  # as in a checkpoint file (and no moments shared with ``legacy``)
    torch.save(legacy.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert "decoupled_weight_decay" not in saved["param_groups"][0]

    new = torch.nn.Parameter(old.detach().clone())
    optimizer = build_radam([new], **radam_options(**HYPER))
    optimizer.load_state_dict(saved)
    assert all(group["decoupled_weight_decay"] for group in optimizer.param_groups)
    for step, grad in enumerate(grads[5:], start=6):
        old.grad, new.grad = grad.clone(), grad.clone()
        legacy.step()
        optimizer.step()
        assert_close(f"step {step}", new.detach(), old.detach(), atol=1e-13)


def test_radam_under_fp16_training_runs_in_fp32(tmp_path, monkeypatch):
    """``--fp16``: fairseq's FP16Optimizer hands RAdam flat fp32 master weights; the fp16 weights
    are those masters rounded once. ``--memory-efficient-fp16`` is refused by fairseq."""
    from fairseq.optim.fp16_optimizer import FP16Optimizer, MemoryEfficientFP16Optimizer

    # FP16Optimizer keys its flat fp32 masters by the CUDA device; the tensors stay on the CPU here
    monkeypatch.setattr(torch.cuda, "current_device", lambda: None)  # == a CPU tensor's device.index

    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    args = options.parse_args_and_arch(options.get_training_parser(), [
        str(tmp_path), "--user-dir", PLUGIN_DIR, "--task", "language_modeling", "--arch", "transformer_lm",
        "--fp16", "--fp16-init-scale", "1", "--optimizer", "radam", "--lr", str(HYPER["lr"]),
        "--radam-betas", str(HYPER["betas"]), "--radam-eps", str(HYPER["eps"]),
        "--weight-decay", str(HYPER["weight_decay"])])
    cfg = convert_namespace_to_omegaconf(args)
    starts = [torch.randn(5, 3) * 0.1, torch.randn(4) * 0.1]
    halves = [torch.nn.Parameter(s.half()) for s in starts]
    optimizer = FP16Optimizer.build_optimizer(cfg, halves)
    assert isinstance(optimizer.fp32_optimizer, FairseqRAdam)
    master = torch.nn.Parameter(torch.cat([h.detach().float().flatten() for h in halves]))
    legacy = LegacyRAdam([master], **HYPER)
    for step in range(1, 9):
        grads = [torch.randn_like(s) * 0.05 for s in starts]
        optimizer.zero_grad()
        optimizer.backward(sum((h.float() * g).sum() for h, g in zip(halves, grads)))  # loss scale 1
        assert all(torch.equal(h.grad, g.half()) for h, g in zip(halves, grads))
        master.grad = torch.cat([g.half().float().flatten() for g in grads])
        optimizer.step()
        legacy.step()
        flat = torch.cat([h.detach().flatten() for h in halves])
        assert flat.dtype == torch.float16
        assert_close(f"step {step}: fp32 masters", optimizer.fp32_params[None].detach(), master.detach(), atol=2e-6)
        assert torch.equal(flat, optimizer.fp32_params[None].detach().half()), f"step {step}: one rounding"

    with pytest.raises(ValueError, match="Unsupported optimizer"):
        MemoryEfficientFP16Optimizer.build_optimizer(cfg, [torch.nn.Parameter(s.half()) for s in starts])


def test_radam_rejects_sparse_gradients():
    param = torch.nn.Parameter(torch.zeros(3, 2))
    param.grad = torch.zeros(3, 2).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        build_radam([param]).step()
