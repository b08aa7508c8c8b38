"""Every registered preset builds the same model from the command line (``--arch X``) and from a
Hydra config (``model: {_name: X}``, what ``fairseq-hydra-train`` gets), overrides included;
and a preset for one kind of input refuses a task of the other kind."""

import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import PLUGIN_DIR, REPO_ROOT, build_lm, build_lra, write_tiny_hydra_config

import seqboat_fairseq  # noqa: F401  (registers the architectures)
from fairseq.models import ARCH_MODEL_NAME_REGISTRY
from seqboat_fairseq.models.presets import PRESET_INPUT_TYPES

LM_ARCHS = sorted(a for a, m in ARCH_MODEL_NAME_REGISTRY.items() if m == "seqboat_lm")
LRA_ARCHS = sorted(a for a, m in ARCH_MODEL_NAME_REGISTRY.items() if m == "seqboat_lra")


def build_from_hydra(task_cfg: dict, model_cfg: dict):
    """What fairseq-hydra-train does with a config: add_defaults, resolve, setup_task, build_model."""
    from fairseq import tasks
    from fairseq.dataclass.configs import FairseqConfig
    from fairseq.dataclass.initialize import add_defaults
    from omegaconf import OmegaConf

    cfg = OmegaConf.structured(FairseqConfig())
    OmegaConf.set_struct(cfg, False)
    cfg.task, cfg.model = task_cfg, model_cfg
    cfg.common.user_dir = PLUGIN_DIR
    add_defaults(cfg)
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    OmegaConf.set_struct(cfg, True)
    task = tasks.setup_task(cfg.task)
    return task.build_model(cfg.model)


def meta_build(build, *args, **kwargs):
    """Builds on the meta device: shapes only, no initialisation cost (slag_lm_big is 16 x D1024)."""
    with torch.device("meta"):
        return build(*args, **kwargs)


def signature(model):
    """Architecture fingerprint: module structure and every parameter's name and shape."""
    return repr(model), [(n, tuple(p.shape)) for n, p in model.named_parameters()]


@pytest.mark.parametrize("arch", LM_ARCHS)
def test_lm_preset_same_under_hydra_and_cli(lm_dir, arch):
    tokens = "1024"
    cli, _, _ = meta_build(build_lm, lm_dir, "--arch", arch, "--tokens-per-sample", tokens)
    hydra = meta_build(build_from_hydra, {"_name": "language_modeling", "data": lm_dir,
                                          "tokens_per_sample": int(tokens)}, {"_name": arch})
    assert signature(hydra) == signature(cli)
    # and an explicit value wins over the preset on both paths
    cli, _, _ = meta_build(build_lm, lm_dir, "--arch", arch, "--tokens-per-sample", tokens, "--decoder-layers", "1")
    hydra = meta_build(build_from_hydra, {"_name": "language_modeling", "data": lm_dir,
                                          "tokens_per_sample": int(tokens)}, {"_name": arch, "decoder_layers": 1})
    assert len(hydra.decoder.layers) == 1 and signature(hydra) == signature(cli)


def test_tiny_under_hydra_is_the_tiny_model(lm_dir):
    """The reported bug: _name seqboat_lm_tiny built the 6-layer D=512 base model."""
    model = build_from_hydra({"_name": "language_modeling", "data": lm_dir, "tokens_per_sample": 64},
                             {"_name": "seqboat_lm_tiny"})
    assert len(model.decoder.layers) == 2 and model.decoder.embed_tokens.embedding_dim == 64


def _lra_task(arch):
    image = PRESET_INPUT_TYPES.get(arch) == "image"  # seqboat_lra itself declares none: text
    return ("lra-image", "image") if image else ("lra-text", "aan" if arch.endswith("aan") else "text")


@pytest.mark.parametrize("arch", LRA_ARCHS)
def test_lra_preset_same_under_hydra_and_cli(lra_dirs, arch):
    task, kind = _lra_task(arch)
    cli, _, _ = meta_build(build_lra, lra_dirs[kind], task, "--arch", arch)
    hydra = meta_build(build_from_hydra, {"_name": task, "data": lra_dirs[kind]}, {"_name": arch})
    assert signature(hydra) == signature(cli)


def test_every_lra_preset_declares_its_input_type():
    """Each preset declares its input when it is registered (lra_presets.py), and nothing can
    change the declarations afterwards."""
    assert set(LRA_ARCHS) - set(PRESET_INPUT_TYPES) == {"seqboat_lra"}  # the bare model takes either
    assert set(PRESET_INPUT_TYPES.values()) == {"text", "image"}
    with pytest.raises(TypeError):
        PRESET_INPUT_TYPES["seqboat_lra_listop"] = "image"


@pytest.mark.parametrize("arch,task,kind", [("seqboat_lra_cifar10", "lra-text", "text"),
                                            ("seqboat_lra_listop", "lra-image", "image"),
                                            ("slag_lra_pf32", "lra-text", "text"),
                                            ("slag_lra_listop_base", "lra-image", "image"),
                                            ("spade_lra_aan", "lra-image", "image"),
                                            ("mega_chunk_lra_pf128", "lra-text", "text")])
def test_lra_preset_refuses_the_other_input_type(lra_dirs, arch, task, kind):
    with pytest.raises(ValueError, match=rf"--arch {arch} is a preset for \w+ input, but the task provides"):
        build_lra(lra_dirs[kind], task, "--arch", arch)


@pytest.mark.slow
def test_fairseq_hydra_train_trains_the_tiny_preset(tmp_path):
    data = tmp_path / "data-bin"
    subprocess.run([sys.executable, os.path.join(REPO_ROOT, "data_prep", "enwik8.py"), "--pydoc-demo",
                    "--max-bytes", "30000", "--destdir", str(data)], check=True, capture_output=True)
    config = tmp_path / "config"
    write_tiny_hydra_config(config, data, tokens_per_sample=64, layers=3, max_update=2, batch_size=4)
    out = subprocess.run([sys.executable, "-m", "fairseq_cli.hydra_train", "--config-dir", str(config),
                          "--config-name", "tiny", f"hydra.run.dir={tmp_path / 'hydra'}"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    params = int(re.search(r"num\. shared model params: ([\d,]+)", log).group(1).replace(",", ""))
    cli, _, _ = build_lm(data, "--arch", "seqboat_lm_tiny", "--decoder-layers", "3", "--tokens-per-sample", "64")
    assert params == sum(p.numel() for p in cli.parameters())
    assert "num_updates=2" in log or "done training" in log
