"""What a user sees (``seqboat_fairseq/quiet.py``): a hub load prints one summary line instead of
fairseq's config dump; Hydra's deprecation warnings are silenced by filters that match those
messages only."""

import logging
import os
import re
import subprocess
import sys
import warnings

import pytest

from conftest import REPO_ROOT, build_lm, write_byte_dictionary, write_tiny_hydra_config
from test_analysis import save_checkpoint


def test_hub_load_prints_one_summary_line(tmp_path):
    data = write_byte_dictionary(tmp_path / "data-bin")
    model, _, cfg = build_lm(data, "--arch", "seqboat_lm_tiny", "--tokens-per-sample", "64")
    params = sum(p.numel() for p in model.parameters())
    # what fairseq-train saves: the training meters, act_rate = sum / count (token-weighted)
    meter = {"val": 0.5, "sum": 30.0, "count": 100.0, "round": 3}
    save_checkpoint(tmp_path / "model.pt", model, cfg, "CrossEntropyCriterion",
                    extra_state={"metrics": {"train": [(200, "act_rate", "AverageMeter", meter)]}})
    script = ("from seqboat_fairseq.models.seqboat_lm import SeqBoatLanguageModel\n"
              f"hub = SeqBoatLanguageModel.from_pretrained({str(tmp_path)!r}, 'model.pt', {data!r})\n"
              "print('loaded', type(hub).__name__)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    lines = output.splitlines()
    assert len(lines) <= 3, output  # fairseq's task line, the summary, 'loaded' (was: 4 + a 7 KB config dict)
    assert "'_name'" not in output and "loading archive file" not in output
    summary = [line for line in lines if "seqboat_lm_tiny:" in line]
    assert len(summary) == 1, output
    assert f"{params:,} parameters" in summary[0] and "2 layers" in summary[0] and "w=32" in summary[0]
    assert "activation rate 30.0% (train metrics" in summary[0]
    assert proc.stdout == "loaded GeneratorHubInterface\n"


def test_hub_loading_restores_the_loggers():
    from seqboat_fairseq.quiet import HUB_NOISE_LOGGERS, hub_loading

    loggers = [logging.getLogger(name) for name in HUB_NOISE_LOGGERS]
    before = [log.level for log in loggers]
    with hub_loading():
        assert not any(log.isEnabledFor(logging.INFO) for log in loggers)
        assert all(log.isEnabledFor(logging.WARNING) for log in loggers)
    assert [log.level for log in loggers] == before


def test_only_hydras_deprecation_warnings_are_silenced(tmp_path):
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    from seqboat_fairseq.quiet import HYDRA_DEPRECATIONS, silence_hydra_deprecations

    data = write_byte_dictionary(tmp_path / "data-bin")
    args = options.parse_args_and_arch(options.get_eval_lm_parser(), [data, "--path", "model.pt"])

    def hydra_warnings(silenced):
        """The Hydra deprecations that fairseq's config conversion (every command line) emits."""
        with warnings.catch_warnings(record=True) as log:
            warnings.simplefilter("always")
            if silenced:
                silence_hydra_deprecations()
            convert_namespace_to_omegaconf(args)
        messages = [str(w.message) for w in log]
        return [m for m in messages if any(re.match(p, m, re.IGNORECASE) for p in HYDRA_DEPRECATIONS)]

    assert len(hydra_warnings(silenced=False)) >= 5  # what fairseq 0.12 with Hydra >= 1.1 prints
    assert hydra_warnings(silenced=True) == []
    with warnings.catch_warnings(record=True) as log:  # any other warning still shows, Hydra's too
        warnings.simplefilter("always")
        silence_hydra_deprecations()
        warnings.warn("hydra.experimental.something_else() changed", UserWarning)
        warnings.warn("The version_base parameter is not a number", DeprecationWarning)
    assert len(log) == 2


@pytest.mark.slow
def test_demo_shows_a_failing_steps_error_and_scales_the_warmup(tmp_path):
    """``UPDATES=60 bash examples/demo.sh``: the warm-up is a tenth of the updates (6), and when a
    step fails its error reaches the screen (a stand-in fairseq-train that fails as fairseq's does)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "fairseq-train"
    stub.write_text("#!/bin/sh\necho \"fairseq-train $*\"\n"
                    "echo 'ValueError: --total-num-update must exceed --warmup-updates' >&2\nexit 3\n")
    stub.chmod(0o755)
    proc = subprocess.run(["bash", "examples/demo.sh"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, UPDATES="60", WORK=str(tmp_path / "demo"),
                                   PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}"))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "ValueError: --total-num-update must exceed --warmup-updates" in proc.stderr
    assert "--warmup-updates 6 " in proc.stderr and "--total-num-update 60 " in proc.stderr


HYDRA_NOISE = re.compile(r"MigrationWarning|version_base|DEBUG:hydra|hydra\.cc/docs|ConfigStore schema|@package _group_")


@pytest.mark.slow
def test_plugin_hydra_train_prints_no_hydra_noise(tmp_path):
    """``python -m seqboat_fairseq.hydra_train`` trains as ``fairseq-hydra-train`` does, without the
    ~20 lines of Hydra deprecations and DEBUG records that the stock entry point prints before it
    loads the plugin (shown here, so that the comparison exercises what it checks)."""
    data = tmp_path / "data-bin"
    subprocess.run([sys.executable, os.path.join(REPO_ROOT, "data_prep", "enwik8.py"), "--pydoc-demo",
                    "--max-bytes", "20000", "--destdir", str(data)], check=True, capture_output=True)
    config = tmp_path / "config"
    write_tiny_hydra_config(config, data, tokens_per_sample=32, layers=1, max_update=1, batch_size=2)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("LOGLEVEL", None)
    logs = {}
    for name, module in (("stock", "fairseq_cli.hydra_train"), ("plugin", "seqboat_fairseq.hydra_train")):
        proc = subprocess.run([sys.executable, "-m", module, "--config-dir", str(config), "--config-name", "tiny",
                               f"hydra.run.dir={tmp_path / name}"], capture_output=True, text=True,
                              cwd=REPO_ROOT, timeout=300, env=env)
        logs[name] = proc.stdout + proc.stderr
        assert proc.returncode == 0, logs[name][-3000:]
        assert "done training" in logs[name]
    assert len(HYDRA_NOISE.findall(logs["stock"])) >= 5, logs["stock"][:3000]
    assert HYDRA_NOISE.findall(logs["plugin"]) == [], logs["plugin"][:3000]
