"""``--optimizer radam`` and ``--lr-scheduler linear_decay``: registration, command line,
schedule values and the RAdam update against an independent re-implementation."""

import inspect
import math

import pytest
import torch
from fairseq import optim as fairseq_optim
from fairseq.optim import lr_scheduler as fairseq_lr_scheduler
from omegaconf import OmegaConf

import seqboat_fairseq.optim  # noqa: F401  (registers radam and linear_decay)
from conftest import PLUGIN_DIR, assert_close
from seqboat_fairseq.optim.lr_scheduler.linear_decay import LinearDecayLRSchedule
from seqboat_fairseq.optim.radam import FairseqRAdam, RAdam

PEAK_LR, WARMUP, TOTAL, INIT_LR = 5e-3, 10, 50, 2e-3


def build_radam(params, lr=PEAK_LR, **options):
    cfg = OmegaConf.create({"_name": "radam", "lr": [lr], **options})
    return fairseq_optim.build_optimizer(cfg, list(params))


def build_linear_decay(lr=PEAK_LR, **options):
    """A ``linear_decay`` scheduler (driving a RAdam optimizer) built through fairseq's registry."""
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
    assert optimizer.supports_memory_efficient_fp16 and optimizer.supports_flat_params


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
    assert optimizer.optimizer.defaults == {"lr": 5e-3, "betas": (0.9, 0.98), "eps": 1e-6, "weight_decay": 0.01}
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


def test_radam_matches_reference_in_both_branches():
    start = torch.randn(4, 6, dtype=torch.float64)
    grads = [torch.randn(4, 6, dtype=torch.float64) * 0.05 for _ in range(10)]
    expected, rhos = reference_radam(start, grads, **HYPER)
    assert min(rhos) < 5 <= max(rhos), "both the SGD and the rectified branch are exercised"

    param = torch.nn.Parameter(start.clone())
    optimizer = build_radam([param], lr=HYPER["lr"], radam_betas=str(HYPER["betas"]), radam_eps=HYPER["eps"],
                            weight_decay=HYPER["weight_decay"])
    for step, (grad, want) in enumerate(zip(grads, expected), start=1):
        param.grad = grad.clone()
        optimizer.step()
        assert_close(f"step {step}", param.detach(), want, atol=1e-7)
    assert optimizer.optimizer.state[param]["step"] == len(grads)


def test_radam_agrees_with_torch_radam_decoupled():
    if "decoupled_weight_decay" not in inspect.signature(torch.optim.RAdam).parameters:
        pytest.skip("this torch has no RAdam(decoupled_weight_decay=...)")
    ours = torch.nn.Parameter(torch.randn(32, dtype=torch.float64))
    theirs = torch.nn.Parameter(ours.detach().clone())
    ours_opt = RAdam([ours], **HYPER)
    theirs_opt = torch.optim.RAdam([theirs], decoupled_weight_decay=True, **HYPER)
    for step in range(12):
        grad = torch.randn(32, dtype=torch.float64) * 0.05
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        ours_opt.step()
        theirs_opt.step()
        assert_close(f"step {step + 1}", ours.detach(), theirs.detach(), atol=1e-12)


def test_radam_bf16_params_use_fp32_math():
    start = torch.randn(64) * 0.1
    grads = [(torch.randn(64) * 0.05).bfloat16() for _ in range(10)]
    low = torch.nn.Parameter(start.bfloat16())
    master = torch.nn.Parameter(start.clone())  # fp32 run, re-synced to the bf16 weights every step
    full = torch.nn.Parameter(start.clone())  # fp32 run throughout
    low_opt, master_opt, full_opt = RAdam([low], **HYPER), RAdam([master], **HYPER), RAdam([full], **HYPER)
    for grad in grads:
        master.data.copy_(low.data.float())
        low.grad, master.grad, full.grad = grad.clone(), grad.float(), grad.float()
        low_opt.step()
        master_opt.step()
        full_opt.step()
        # one fp32 step on the upcast weights, rounded once to bf16
        assert low.dtype == torch.bfloat16 and torch.equal(low.data, master.data.bfloat16())
    for key in ("exp_avg", "exp_avg_sq"):
        state = low_opt.state[low][key]
        assert state.dtype == torch.float32 and torch.equal(state, full_opt.state[full][key]), key
    # eleven bf16 roundings (the start and ten steps, half an ulp each for |w| < 0.5) from the fp32 run
    assert full.detach().abs().max() < 0.5
    assert_close("bf16 vs fp32", low.detach().float(), full.detach(), atol=11 * 2**-10)


def test_radam_rejects_sparse_gradients():
    param = torch.nn.Parameter(torch.zeros(3, 2))
    param.grad = torch.zeros(3, 2).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        RAdam([param]).step()
