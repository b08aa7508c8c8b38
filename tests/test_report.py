"""Stored benchmark results and docs/results.md: ``emit`` saves stamped records, ``bench/report.py``
renders them, ``--check`` fails whenever the page or a plot differs from the records."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "bench")
sys.path.insert(0, BENCH)

import common  # noqa: E402
import report  # noqa: E402


def run_report(*args):
    return subprocess.run([sys.executable, os.path.join(BENCH, "report.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_docs_results_md_is_in_sync_with_the_stored_results():
    out = run_report("--check")
    assert out.returncode == 0, out.stderr


@pytest.fixture
def stored(tmp_path, monkeypatch):
    """Two runs of a fake benchmark emitted through ``common.emit`` into a temporary results dir."""
    results = tmp_path / "results"
    monkeypatch.setenv(common.RESULTS_ENV, str(results))
    for value in (1.5, 2.5):  # two runs of the same command: only the latest is reported
        common._RUN_STAMP.clear()
        monkeypatch.setattr(sys, "argv", ["bench/linear_rows.py", "--rows", "1,2"])
        monkeypatch.setattr(common, "script_name", lambda: "linear_rows")
        for rows in (1, 2):
            common.emit({"bench": "linear_rows", "rows": rows, "f_linear_us": value * rows, "linear_us": 1.0,
                         "threads": 1})
    common._RUN_STAMP.clear()
    return results


def test_emit_stamps_each_record_with_its_run(stored):
    lines = (stored / "linear_rows.jsonl").read_text().splitlines()
    assert len(lines) == 4
    entry = json.loads(lines[-1])
    run = entry["run"]
    assert run["command"] == "python bench/linear_rows.py --rows 1,2"
    assert run["commit"] and run["lib"] and run["date"].endswith("Z") and "cores" in run["machine"]
    assert entry["record"] == {"bench": "linear_rows", "rows": 2, "f_linear_us": 5.0, "linear_us": 1.0, "threads": 1}
    assert "lib_now" not in entry


def test_a_record_made_after_the_library_changed_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv(common.RESULTS_ENV, str(tmp_path))
    monkeypatch.setattr(common, "script_name", lambda: "fake")
    common._RUN_STAMP.clear()
    common.emit({"bench": "fake", "x": 1})
    monkeypatch.setattr(common, "library_hash", lambda: "edited")
    common.emit({"bench": "fake", "x": 2})
    common._RUN_STAMP.clear()
    first, second = (json.loads(line) for line in (tmp_path / "fake.jsonl").read_text().splitlines())
    assert "lib_now" not in first and second["lib_now"] == "edited"
    assert "changed during this run**: 1 of 2" in report.provenance([first, second])


def test_no_results_are_saved_under_pytest_unless_asked(monkeypatch, tmp_path):
    monkeypatch.delenv(common.RESULTS_ENV, raising=False)
    assert "PYTEST_CURRENT_TEST" in os.environ and common.results_dir() is None
    for off in ("", "0", "off"):
        monkeypatch.setenv(common.RESULTS_ENV, off)
        assert common.results_dir() is None
    monkeypatch.setenv(common.RESULTS_ENV, str(tmp_path))
    assert common.results_dir() == str(tmp_path)


def test_report_renders_the_latest_run_and_check_detects_drift(stored, tmp_path):
    out, img = tmp_path / "results.md", tmp_path / "img"
    args = ["--results", str(stored), "--out", str(out), "--img-dir", str(img)]
    assert run_report(*args, "--check").returncode == 1  # nothing written yet
    done = run_report(*args)
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert "`python bench/linear_rows.py --rows 1,2`" in text
    assert "| 1 | 2.5 |" in text and "| 2 | 5.0 |" in text  # the latest run, values as stored
    assert "| 1 | 1.5 |" not in text
    pngs = sorted(os.listdir(img))
    assert len(pngs) == 1 and f"img/{pngs[0]}" in text
    assert run_report(*args, "--check").returncode == 0

    out.write_text(text.replace("| 2 | 5.0 |", "| 2 | 4.0 |"))  # a hand-edited figure
    bad = run_report(*args, "--check")
    assert bad.returncode == 1 and "differs" in bad.stderr
    out.write_text(text)

    with open(stored / "linear_rows.jsonl") as f:  # a new run: page and plot are stale
        entry = json.loads(f.readlines()[-1])
    entry["run"].update(run_id="z-later", date="2999-01-01T00:00:00Z")
    entry["record"]["f_linear_us"] = 9.0
    with open(stored / "linear_rows.jsonl", "a") as f:
        f.write(json.dumps(entry) + "\n")
    stale = run_report(*args, "--check")
    assert stale.returncode == 1 and "differs" in stale.stderr and "shows other data" in stale.stderr

    assert run_report(*args).returncode == 0  # regenerated: the old plot is replaced, not kept
    assert len(os.listdir(img)) == 1 and run_report(*args, "--check").returncode == 0
    (img / "extra.png").write_bytes((img / os.listdir(img)[0]).read_bytes())
    assert "not listed" in run_report(*args, "--check").stderr


def test_a_broken_results_file_is_one_error_line(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"run": {}}\n')
    out = run_report("--results", str(tmp_path), "--out", str(tmp_path / "r.md"), "--img-dir", str(tmp_path / "i"))
    assert out.returncode == 2 and out.stderr.startswith("error: ") and len(out.stderr.splitlines()) == 1
    assert "x.jsonl:1" in out.stderr and not (tmp_path / "r.md").exists()


def test_table_moves_constant_columns_below():
    lines = report.table([{"bench": "k", "a": 1, "b": 2.0}, {"bench": "k", "a": 2, "b": 2.0}])
    assert lines[0] == "| a |" and lines[-1] == "Same in every row: b = `2.0`."


def _summary(task, model, value, steps_per_s, alloc_mb, knob=None, knob_value=None, metric="test_acc", **extra):
    return {"bench": "tradeoff_summary", "task": task, "model": model, "knob": knob, "knob_value": knob_value,
            "metric": metric, "value": value, "value_std": 0.5, "steps_per_s": steps_per_s, "alloc_mb": alloc_mb,
            "act_rate": 0.3 if model == "seqboat" else None, **extra}


def test_tradeoff_draws_one_race_plot_per_task_and_the_knob_curve_of_the_sweep_task(tmp_path):
    records = [_summary("lm", m, v, s, a, metric="test_bpc") for m, v, s, a in
               (("seqboat", 2.1, 3.0, 10), ("transformer", 2.3, 2.0, 30))]
    records += [_summary("listops", m, v, s, a) for m, v, s, a in
                (("seqboat", 40, 3.0, 10), ("mega_chunk", 38, 2.0, 20), ("spade", 39, 1.5, 25))]
    records += [_summary("listops", "seqboat", 35 + k, 4.0 - k, 9, knob="act_bias", knob_value=float(k))
                for k in (0.5, 1, 2)]
    records.append(dict(_summary("listops", "transformer", 0, 0, 0), error="2 of 3 seeds gave no number"))
    plots = {}
    for suffix, spec, part in report.plot_specs("tradeoff_summary", records):
        data = report.plot_data(spec, part)
        if data is not None:
            plots[suffix] = (spec, data)
    assert sorted(plots) == ["-knobs-listops", "-race-listops", "-race-lm"]
    race = plots["-race-listops"][1]
    assert [p["series"] for p in race["points"]] == ["mega_chunk", "seqboat", "spade"]  # no knob run, no FAILED row
    assert plots["-race-lm"][1]["invert"] and not race["invert"]  # bits: lower is better, drawn upward
    knobs = plots["-knobs-listops"][1]
    assert {p["label"].split(" ")[0] for p in knobs["points"]} == {"preset", "act_bias=0.5", "act_bias=1",
                                                                     "act_bias=2"}
    for suffix, (spec, data) in plots.items():  # each draws
        path = tmp_path / f"p{suffix}.png"
        report.draw(spec, data, str(path), report.data_hash(data))
        assert report.png_digest(str(path)) == report.data_hash(data)
