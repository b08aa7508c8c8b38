"""Smoke tests of the paper-comparison benchmarks: ``bench/paper_efficiency.py --quick`` and ``bench/quality_race.py
--quick`` run end to end, print their tables and well-formed ``BENCH`` lines, and the race refuses a number
it cannot vouch for."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

BENCH = os.path.join(REPO_ROOT, "bench")


def _run(script, *args, timeout=300):
    proc = subprocess.run([sys.executable, os.path.join(BENCH, script), *map(str, args)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)
    records = [json.loads(line[len("BENCH "):]) for line in proc.stdout.splitlines() if line.startswith("BENCH ")]
    return proc, records


@pytest.mark.slow
def test_paper_efficiency_quick():
    """Every setting x model row and every SeqBoat-vs-baseline ratio, with the paper's numbers beside ours
    (~50 s on 2 shared cores)."""
    proc, records = _run("paper_efficiency.py", "--quick")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    rows = [r for r in records if r["bench"] == "paper_efficiency"]
    assert {(r["setting"], r["model"]) for r in rows} == {
        (s, m) for s in ("lra_text", "sc10", "enwik8") for m in ("seqboat", "mega_chunk", "spade", "transformer")}
    for r in rows:
        assert r["ms"] > 0 and r["alloc_mb"] > 0 and r["params"] > 0, r
        assert (r["act_rate"] is None) == (r["model"] == "transformer"), r
        if r["model"] in ("mega_chunk", "spade"):
            assert r["act_rate"] == 1.0, r  # no router: every token is active
        if r["setting"] == "enwik8":
            assert r["decode_ms_per_token"] > 0, r
        # where the time goes: FLOPs of the same step, and a profiled split whose shares cover the step
        assert r["gflop"] > 0 and r["gflop_per_s"] > 0, r
        assert set(r["split_share"]) == {"md_ema", "routing", "projections", "attention", "rest"}, r
        assert abs(sum(r["split_share"].values()) - 1) < 0.01, r
        labelled = {c for c, share in r["split_share"].items() if share > 0}
        expected = {"attention"} if r["model"] == "transformer" else {"md_ema", "projections", "attention"}
        assert expected <= labelled and expected <= set(r["split_labelled"]), r
        if r["model"] == "seqboat":
            assert "routing" in labelled, r  # the router and the compression ran and were attributed
        if r["model"] == "spade":  # FFN re-solved for SeqBoat's parameter count at the reduced width
            seqboat = next(x for x in rows if x["setting"] == r["setting"] and x["model"] == "seqboat")
            assert abs(r["params"] / seqboat["params"] - 1) < 0.01, (r, seqboat)
    ratios = {(r["setting"], r["baseline"]): r for r in records if r["bench"] == "paper_efficiency_ratio"}
    assert len(ratios) == 9
    for x in ratios.values():
        assert x["flop_ratio"] > 0 and x["of_flops"] == pytest.approx(x["speedup"] / x["flop_ratio"], rel=0.01), x
    assert (ratios["sc10", "mega_chunk"]["paper_speedup"], ratios["sc10", "mega_chunk"]["paper_mem_ratio"]) == (1.32, 0.44)
    assert ratios["lra_text", "transformer"]["paper_speedup"] == 10.4
    assert "REDUCED" in proc.stdout and "SeqBoat vs baselines" in proc.stdout


@pytest.mark.slow
def test_paper_efficiency_forced_rates_in_one_run():
    """--seqboat-rate with a list: one SeqBoat row per rate (the router's own with 'router'), each forced to
    exactly its rate; fewer active tokens, fewer FLOPs; target lines against MEGA-chunk per forced rate.
    With --rounds 2 every row is measured twice: one record per row, its ms the median of the rounds, each
    speed-up the median of the per-round ratios."""
    proc, records = _run("paper_efficiency.py", "--quick", "--settings", "sc10", "--models", "seqboat,mega_chunk",
                         "--seqboat-rate", "router,0.1,0.5", "--decode-steps", "0", "--no-split", "--rounds", "2")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    rows = {r["forced_rate"]: r for r in records if r["bench"] == "paper_efficiency" and r["model"] == "seqboat"}
    assert set(rows) == {None, 0.1, 0.5}
    assert rows[0.1]["act_rate"] == pytest.approx(0.1, abs=0.002) and rows[0.5]["act_rate"] == pytest.approx(0.5)
    assert rows[0.1]["gflop"] < rows[0.5]["gflop"]
    assert all("split_share" not in r for r in rows.values())  # --no-split
    ratios = [r for r in records if r["bench"] == "paper_efficiency_ratio"]
    assert sorted(str(r["forced_rate"]) for r in ratios) == ["0.1", "0.5", "None"]
    targets = [r for r in records if r["bench"] == "paper_efficiency_target"]
    assert {(t["forced_rate"], t["check"]) for t in targets} == {(0.1, "of_flops"), (0.5, "of_flops")}
    assert "seqboat@10%" in proc.stdout
    measured = [r for r in records if r["bench"] == "paper_efficiency"]
    assert len(measured) == 4 and proc.stdout.count("# round ") == 2
    for r in measured:
        assert len(r["ms_rounds"]) == 2 and r["ms"] == pytest.approx(sum(r["ms_rounds"]) / 2, abs=0.01), r
    mega = next(r for r in measured if r["model"] == "mega_chunk")
    for x in ratios:
        sb = rows[x["forced_rate"]]
        per_round = [a / b for a, b in zip(mega["ms_rounds"], sb["ms_rounds"])]
        assert x["speedup_rounds"] == pytest.approx(per_round, abs=1e-3)
        assert x["speedup"] == pytest.approx(sum(per_round) / 2, abs=1e-3), x


@pytest.mark.parametrize("rate", ["0", "1.5", "half", ","])
def test_paper_efficiency_refuses_a_bad_rate(rate):
    proc, records = _run("paper_efficiency.py", "--seqboat-rate", rate, timeout=60)
    assert proc.returncode != 0 and not records
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --seqboat-rate"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_paper_efficiency_refuses_no_rounds():
    proc, records = _run("paper_efficiency.py", "--rounds", "0", timeout=60)
    assert proc.returncode != 0 and not records
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --rounds"), proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_quality_race_quick(tmp_path):
    """The race end to end on both tasks for SeqBoat and the Transformer (the wrapper that registers
    transformer_lra included), ~10 s of training each; then a forged parameter mismatch is refused."""
    work = tmp_path / "race"
    proc, records = _run("quality_race.py", "--quick", "--minutes", "0.1", "--models", "seqboat,transformer",
                         "--work-dir", work, "--lm-bytes", "40000")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert {(r["task"], r["model"]) for r in records} == {(t, m) for t in ("lm", "listops")
                                                           for m in ("seqboat", "transformer")}
    for r in records:
        assert "error" not in r, r
        assert r["evaluated"] == r["split_size"] > 0, r
        assert abs(r["params_vs_seqboat"] - 1) <= 0.05, r
        assert r["updates"] > 0, r
        if r["task"] == "lm":
            assert r["metric"] == "test_bpc" and 0 < r["value"] < 9, r
        else:
            assert r["metric"] == "test_acc" and 0 <= r["value"] <= 100, r
    assert "Quality race" in proc.stdout

    # refuses to vouch for what it cannot: a failed training run raises (the driver then prints no number and
    # exits 1), and so does a parameter count more than 5 % off SeqBoat's
    sys.path.insert(0, BENCH)
    try:
        import quality_race
    finally:
        sys.path.remove(BENCH)
    with pytest.raises(quality_race.RunFailed, match="exit"):
        quality_race.train(quality_race.Run("lm", "seqboat", "seqboat_lm_tiny", ["--arch", "seqboat_lm_tiny"]),
                           str(tmp_path / "missing-data"), str(tmp_path / "run" / "checkpoints"),
                           quality_race.get_parser().parse_args(["--minutes", "0.01", "--timeout", "120"]))
    assert quality_race.param_ratio_ok(104, 100) and not quality_race.param_ratio_ok(106, 100)


def test_quality_race_replaces_only_its_own_checkpoint_dirs(tmp_path, monkeypatch):
    """A checkpoint directory left by an earlier race is emptied (fairseq would resume it and report
    the old run); one the script did not create is refused and left exactly as it was."""
    monkeypatch.syspath_prepend(BENCH)
    import quality_race

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "checkpoint_last.pt").write_bytes(b"the user's")
    with pytest.raises(quality_race.RunFailed, match="not created by bench/quality_race.py"):
        quality_race.fresh_save_dir(str(foreign))
    assert sorted(p.name for p in foreign.iterdir()) == ["checkpoint_last.pt"]
    assert (foreign / "checkpoint_last.pt").read_bytes() == b"the user's"

    ours = tmp_path / "ours"
    quality_race.fresh_save_dir(str(ours))  # new: created and marked
    (ours / "checkpoint_last.pt").write_bytes(b"an earlier race's")
    quality_race.fresh_save_dir(str(ours))
    assert sorted(p.name for p in ours.iterdir()) == [quality_race.SAVE_DIR_MARKER]


@pytest.mark.slow
def test_tradeoff_quick(tmp_path):
    """bench/tradeoff.py end to end on the speech task (SeqBoat and the Transformer, one seed, one knob value;
    the LM and ListOps training runs through the same quality_race code, see test_quality_race_quick): each run
    trained, evaluated over its whole test split and timed as a trained checkpoint with its learned per-layer
    rates; summaries; the task's PNG and the knob's."""
    work = tmp_path / "tradeoff"
    proc, records = _run("tradeoff.py", "--quick", "--tasks", "speech", "--models", "seqboat,transformer",
                         "--seeds", "1", "--sweep", "act_bias=2", "--sweep-task", "speech", "--work-dir", work, timeout=1100)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    runs = [r for r in records if r["bench"] == "tradeoff"]
    assert {(r["task"], r["model"], r["knob"], r["seed"]) for r in runs} == {
        *(("speech", m, None, 1) for m in ("seqboat", "transformer")),
        ("speech", "seqboat", "act_bias", 1)}
    for r in runs:
        assert "error" not in r, r
        assert r["evaluated"] == r["split_size"] > 0 and r["updates"] > 0, r
        assert abs(r["params_vs_seqboat"] - 1) <= 0.05 and r["step_ms"] > 0 and r["alloc_mb"] > 0, r
        if r["model"] == "seqboat":  # the learned rate of every layer, each a fraction of the real tokens
            assert len(r["layer_rates"]) == 2 and all(0 <= x <= 1 for x in r["layer_rates"]), r
        else:
            assert r["layer_rates"] == [] and r["act_rate"] is None, r
    summaries = [r for r in records if r["bench"] == "tradeoff_summary"]
    assert len(summaries) == 3 and all("error" not in s and s["seeds"] == [1] for s in summaries), summaries
    for name in ("tradeoff_speech.png", "tradeoff_sweep.png"):
        assert (work / name).stat().st_size > 1000, name
    assert "learned rate per layer" in proc.stdout


def test_tradeoff_summaries_are_over_every_seed_or_none(monkeypatch):
    """mean +- std over the seeds, speed relative to the task's Transformer; a (task, model) with a seed that
    gave no number gets no number at all."""
    monkeypatch.syspath_prepend(BENCH)
    import tradeoff

    def run(model, seed, value, ms, rates=(), **extra):
        return {"task": "listops", "model": model, "knob": None, "knob_value": None, "params": 100, "seed": seed,
                "metric": "test_acc", "value": value, "step_ms": ms, "alloc_mb": 10.0, "updates": 5,
                "layer_rates": list(rates), **extra}

    records = [run("seqboat", 1, 40.0, 10.0, (0.2, 0.4)), run("seqboat", 2, 50.0, 30.0, (0.4, 0.6)),
               run("transformer", 1, 30.0, 40.0), run("transformer", 2, 20.0, 40.0),
               run("spade", 1, 30.0, 40.0), run("spade", 2, 30.0, 40.0, error="exit 1")]
    by = {s["model"]: s for s in tradeoff.summarise(records, [1, 2])}
    s = by["seqboat"]
    assert (s["value"], s["value_std"], s["step_ms"]) == (45.0, pytest.approx(7.0711, abs=1e-4), 20.0)
    assert s["layer_rates"] == [0.3, 0.5] and s["act_rate"] == 0.4 and s["speedup_vs_transformer"] == 2.0
    assert by["transformer"]["layer_rates"] is None and by["transformer"]["speedup_vs_transformer"] == 1.0
    assert "error" in by["spade"] and "value" not in by["spade"]


@pytest.mark.parametrize("argv, fragment", [
    (["--seeds", "a"], "--seeds"), (["--tasks", "vision"], "--tasks"), (["--sweep", "temperature=1"], "--sweep"),
    (["--sweep", "act_bias=x"], "--sweep"), (["--tasks", "lm", "--sweep", "act_bias=1"], "--sweep-task")])
def test_tradeoff_refuses_bad_flags(argv, fragment, tmp_path):
    proc, records = _run("tradeoff.py", *argv, "--work-dir", tmp_path / "w", timeout=60)
    assert proc.returncode != 0 and not records
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and fragment in last and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "w").exists()


def test_masked_work_rows_and_refusal():
    """bench/masked_work.py: one row per (setting, rate) with the counts of ``window_products``; a bad
    --rates is one error line."""
    proc, records = _run("masked_work.py", "--rates", "0.25,1", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {(r["setting"], r["rate"]) for r in records} == {(s, q) for s in ("sc10", "lra_text", "enwik8")
                                                            for q in (0.25, 1.0)}
    for r in records:
        assert 0 <= r["masked_share"] == round(1 - r["allowed"] / r["computed"], 4) and r["slots"] >= r["active"], r
        assert r["met"] == (r["masked_share"] <= 0.15), r
    bad = subprocess.run([sys.executable, os.path.join(BENCH, "masked_work.py"), "--rates", "0,2"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --rates") and len(bad.stderr.splitlines()) == 1
