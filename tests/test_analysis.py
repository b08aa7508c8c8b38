"""The RQ2 activation analysis (``python -m seqboat_fairseq.analysis.activation``) on tiny real
fairseq checkpoints: lra-image (figures, heat maps, numbers recomputed from the model), lra-text
with padding, Retrieval (two documents), a language model, and the error messages; the heat maps'
data-fitted colour scale, the CSV's column description and the check that every requested sample
is measured."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import REPO_ROOT, build_lm, build_lra, write_byte_dictionary, write_lra_dictionaries

TINY_LRA = ["--encoder-layers", "2", "--encoder-embed-dim", "32", "--encoder-hidden-dim", "64", "--z-dim", "16"]
N_IMAGES, ANALYSED, BATCH = 6, 5, 2


@pytest.fixture
def one_thread():
    """One intra-op thread, like the subprocess (OMP_NUM_THREADS=1): identical float results."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def save_checkpoint(path, model, cfg, criterion, extra_state=None):
    """A checkpoint in fairseq's own format (what fairseq-train writes, minus optimizer state)."""
    torch.save({"cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), "model": model.state_dict(),
                "optimizer_history": [{"criterion_name": criterion, "optimizer_name": "FairseqAdam",
                                       "lr_scheduler_state": {"best": 0.0}, "num_updates": 0}],
                "extra_state": extra_state or {}}, path)
    return str(path)


def load(path, data, **overrides):
    import seqboat_fairseq  # noqa: F401
    from fairseq import checkpoint_utils

    models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(path)], {"data": str(data), **overrides})
    return models[0].eval(), task


def run_main(*args):
    from seqboat_fairseq.analysis.activation import main

    return main([str(a) for a in args])


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_columns_explained(out, rows):
    """activation_time_columns.md, beside the CSV, explains exactly the CSV's columns, in order."""
    text = (out / "activation_time_columns.md").read_text()
    explained = [line.split("`")[1] for line in text.splitlines() if line.startswith("| `")]
    assert explained == list(rows[0]), (explained, list(rows[0]))


def png_size(path):
    from PIL import Image

    with Image.open(path) as image:
        image.verify()  # a complete, valid PNG
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("L"))
        return image.format, image.size, float(pixels.std())


# --------------------------------------------------------------------------- lra-image
@pytest.fixture(scope="module")
def image_setup(tmp_path_factory):
    """6 grey-scale 32x32 images (a bright diagonal stroke on noise) + a tiny pf32 checkpoint."""
    root = tmp_path_factory.mktemp("analysis_image")
    data = root / "pathfinder32"
    os.makedirs(data / "input")
    os.makedirs(data / "label")
    rng = np.random.RandomState(0)
    images = rng.randint(0, 60, size=(N_IMAGES, 32, 32))
    for i in range(N_IMAGES):
        for t in range(32):
            images[i, t, (t + 5 * i) % 32] = 255
    images = images.reshape(N_IMAGES, 1024)
    labels = [i % 2 for i in range(N_IMAGES)]
    np.save(data / "input" / "valid.npy", images.astype(np.uint8))  # the layout data_prep/lra.py writes
    np.save(data / "label" / "valid.npy", np.array(labels, dtype=np.int64))
    torch.manual_seed(0)
    model, _, cfg = build_lra(data, "lra-image", "--arch", "seqboat_lra_pf32", *TINY_LRA)
    path = save_checkpoint(root / "checkpoint_best.pt", model, cfg, "LRACrossEntropyCriterion")
    return {"root": root, "data": data, "path": path, "images": images, "labels": labels}


def test_image_command_writes_figures_and_numbers_that_match_the_model(image_setup, one_thread):
    out = image_setup["root"] / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "seqboat_fairseq.analysis.activation", "--path", image_setup["path"], "--data",
         str(image_setup["data"]), "--split", "valid", "--out-dir", str(out), "--max-samples", str(ANALYSED),
         "--batch-size", str(BATCH), "--heatmaps", "2", "--cpu"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert "layer" in proc.stdout and "accuracy" in proc.stdout, proc.stdout

    # figures: valid PNGs of the expected sizes (dpi 100), not blank; exactly K heat maps
    assert png_size(out / "activation_time.png")[:2] == ("PNG", (600, 420))
    for k in range(2):
        fmt, size, std = png_size(out / f"confidence_{k}.png")
        assert (fmt, size) == ("PNG", (880, 330)) and std > 10  # input + 2 layer panels, one row
    assert not (out / "confidence_2.png").exists()

    # independent recomputation: read the pixels, normalise, forward, count activated tokens
    model, _ = load(image_setup["path"], image_setup["data"])
    pixels = torch.tensor(image_setup["images"][:ANALYSED], dtype=torch.float32) / 255.0
    pixels = (pixels - 0.5) / 0.5
    rates, predictions = [], []
    with torch.no_grad():
        for start in range(0, ANALYSED, BATCH):
            x = pixels[start:start + BATCH]
            logits, extra = model(x, torch.full((len(x),), 1024))
            assert extra["padding_mask"] == [None]
            rates.append(torch.stack([a.active.double().mean(-1) for a in extra["activations"][0]], dim=1))
            predictions += logits.argmax(-1).tolist()
    rates = torch.cat(rates).numpy()  # (samples, layers)
    assert 0 < rates.mean() < 1

    summary = json.loads((out / "activation_time.json").read_text())
    assert summary["checkpoint"] == image_setup["path"] and summary["split"] == "valid"
    assert summary["arch"] == "seqboat_lra_pf32" and summary["task"] == "lra-image"
    assert summary["n_samples"] == ANALYSED and summary["num_layers"] == 2
    for layer, entry in enumerate(summary["layers"]):
        assert entry["layer"] == layer and entry["n_samples"] == ANALYSED
        for key, value in (("mean", rates[:, layer].mean()), ("std", rates[:, layer].std()),
                           ("min", rates[:, layer].min()), ("max", rates[:, layer].max()),
                           ("token_mean", rates[:, layer].mean())):
            assert entry[key] == pytest.approx(value, abs=1e-12), (layer, key)
        assert 0.5 <= entry["confidence_mean"] <= 1.0  # max of two probabilities
    assert summary["overall"]["mean"] == pytest.approx(rates.mean(), abs=1e-12)
    assert summary["overall"]["std"] == pytest.approx(rates.mean(axis=1).std(), abs=1e-12)
    labels = image_setup["labels"][:ANALYSED]
    assert summary["accuracy"] == pytest.approx(np.mean(np.array(labels) == np.array(predictions)))

    rows = read_csv(out / "activation_time.csv")
    assert len(rows) == ANALYSED
    assert list(rows[0]) == ["sample", "n_tokens", "label", "prediction", "correct", "layer_0", "layer_1", "mean"]
    assert_columns_explained(out, rows)
    assert str(out / "activation_time_columns.md") in proc.stdout  # listed with the files written
    for i, row in enumerate(rows):
        assert int(row["sample"]) == i and int(row["n_tokens"]) == 1024
        assert int(row["label"]) == labels[i] and int(row["prediction"]) == predictions[i]
        assert int(row["correct"]) == int(labels[i] == predictions[i])
        assert [float(row[f"layer_{j}"]) for j in range(2)] == pytest.approx(rates[i], abs=1e-6)


def test_heatmap_inputs_are_the_denormalised_image_and_the_router_confidence(image_setup, one_thread):
    from seqboat_fairseq.analysis.load import load_seqboat_checkpoint, load_split
    from seqboat_fairseq.analysis.measure import analyse

    loaded = load_seqboat_checkpoint(image_setup["path"], str(image_setup["data"]))
    dataset = load_split(loaded.task, "valid")
    result = analyse(loaded, dataset, max_samples=3, batch_size=3, heatmaps=2)
    assert [h.sample for h in result.heatmaps] == [0, 1]
    with torch.no_grad():
        x = (torch.tensor(image_setup["images"][:2], dtype=torch.float32) / 255.0 - 0.5) / 0.5
        _, extra = loaded.model(x, torch.full((2,), 1024))
    for k, item in enumerate(result.heatmaps):
        np.testing.assert_allclose(item.pixels, image_setup["images"][k], atol=1e-3)
        expected = torch.stack([a.confidence[k] for a in extra["activations"][0]]).numpy()
        np.testing.assert_allclose(item.confidence, expected, atol=1e-6)
        assert (item.confidence[expected == 0] == 0).all() and (item.confidence[expected > 0] >= 0.5).all()
        active = torch.stack([a.active[k] for a in extra["activations"][0]]).numpy()
        np.testing.assert_array_equal(item.active, active)
        np.testing.assert_array_equal(item.active, expected > 0)


def test_activation_time_plot_clips_error_bars_and_keeps_the_legend_clear(tmp_path):
    """Layers near 0 % and 100 % with wide spreads (one std would reach -15 % and 112 %): the error
    bars stop at 0 and 100 %, every value label lies inside the axes, and the legend's box
    (measured by matplotlib's renderer) overlaps no label, no error bar and not the axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from seqboat_fairseq.analysis.plots import plot_activation_time

    means, stds = [0.97, 0.05, 0.5, 0.93, 1.0, 0.88], [0.15, 0.2, 0.45, 0.1, 0.0, 0.12]
    summary = {"layers": [{"mean": m, "std": s} for m, s in zip(means, stds)], "overall": {"mean": float(np.mean(means))}}
    assert max(m + s for m, s in zip(means, stds)) > 1.0 and min(m - s for m, s in zip(means, stds)) < 0.0
    fig = plot_activation_time(str(tmp_path / "activation_time.png"), summary, "a title")
    assert png_size(tmp_path / "activation_time.png")[:2] == ("PNG", (670, 420))  # 0.7 in per layer + 2.5
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    (ax,) = fig.axes
    from matplotlib.container import ErrorbarContainer

    (errorbar,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    segments = errorbar.lines[2][0].get_segments()
    ends = np.array([[seg[0][1], seg[1][1]] for seg in segments])
    assert len(segments) == len(means) and ends.min() >= 0.0 and ends.max() <= 100.0
    np.testing.assert_allclose(ends.max(1), np.minimum(np.add(means, stds), 1.0) * 100)
    np.testing.assert_allclose(ends.min(1), np.maximum(np.subtract(means, stds), 0.0) * 100)
    labels = [t for t in ax.texts if t.get_text()]
    assert [t.get_text() for t in labels] == [f"{100 * m:.1f}" for m in means]
    (legend,) = [ax.get_legend()] if ax.get_legend() else fig.legends
    legend_box = legend.get_window_extent(renderer)
    axes_box = ax.get_window_extent(renderer)
    error_points = ax.transData.transform(np.concatenate(segments))  # pixels, as the renderer drew them
    assert not legend_box.overlaps(axes_box)
    assert not legend_box.count_contains(error_points) and axes_box.padded(1).count_contains(error_points) == len(error_points)
    for text in labels:
        box = text.get_window_extent(renderer)
        assert not legend_box.overlaps(box), text.get_text()
        assert axes_box.contains(box.x0, box.y0) and axes_box.contains(box.x1, box.y1), text.get_text()


def test_heatmap_colour_scale_fits_the_active_tokens(tmp_path):
    """Active tokens' confidences in 0.5-0.6 (what trained routers give): the colour scale spans
    their 2nd-98th percentile, not 0-1, skipped tokens are masked (grey), and the colour bar says so."""
    from seqboat_fairseq.analysis.measure import HeatmapInput
    from seqboat_fairseq.analysis.plots import PERCENTILES, confidence_range, plot_confidence

    rng = np.random.RandomState(3)
    active = rng.rand(2, 256) < 0.6
    confidence = np.where(active, rng.uniform(0.5, 0.6, size=active.shape), 0.0)
    vmin, vmax = confidence_range(confidence, active)
    assert (vmin, vmax) == pytest.approx(tuple(np.percentile(confidence[active], PERCENTILES)))
    assert 0.5 <= vmin < 0.51 and 0.59 < vmax <= 0.6

    item = HeatmapInput(7, rng.randint(0, 256, size=256).astype(np.float64), confidence, active,
                        active.mean(1).tolist(), 1, 0)
    fig = plot_confidence(str(tmp_path / "confidence_7.png"), item, "title")
    assert png_size(tmp_path / "confidence_7.png")[0] == "PNG"
    maps = [image for ax in fig.axes for image in ax.get_images()][1:]  # after the input image
    assert len(maps) == 2
    for layer, image in enumerate(maps):
        assert image.get_clim() == pytest.approx((vmin, vmax))
        np.testing.assert_array_equal(np.ma.getmaskarray(image.get_array()).ravel(), ~active[layer])
        # the active tokens use the whole colour map (on a 0-1 scale they would span a tenth of it)
        assert np.ptp(np.clip(image.norm(confidence[layer][active[layer]]), 0, 1)) > 0.95
    label = fig.axes[-1].get_ylabel()
    assert "active tokens" in label and "p2-p98" in label and f"{vmin:.3f}-{vmax:.3f}" in label

    # degenerate inputs: no active token; all confidences equal
    assert confidence_range(np.zeros((2, 4)), np.zeros((2, 4), dtype=bool)) == (0.5, 1.0)
    low, high = confidence_range(np.ones((2, 4)), np.ones((2, 4), dtype=bool))
    assert high == 1.0 and 0 < high - low < 0.01


def test_every_requested_sample_is_measured(image_setup, tmp_path, monkeypatch, capsys, one_thread):
    """Batches from the task's iterator (a batch size that does not divide the count) measure each
    sample exactly once; an iterator that loses one fails the command: no rate over fewer samples."""
    from seqboat_fairseq.analysis.load import AnalysisError, load_seqboat_checkpoint, load_split
    from seqboat_fairseq.analysis.measure import AnalysisResult, SequenceRecord, analyse, check_complete
    from seqboat_fairseq.tasks.lra import EpochShuffledDataset

    loaded = load_seqboat_checkpoint(image_setup["path"], str(image_setup["data"]))
    dataset = load_split(loaded.task, "valid")
    result = analyse(loaded, dataset, max_samples=5, batch_size=2)
    assert [r.sample for r in result.records] == list(range(5))

    ordered_indices = EpochShuffledDataset.ordered_indices
    monkeypatch.setattr(EpochShuffledDataset, "ordered_indices", lambda self: ordered_indices(self)[1:])
    with pytest.raises(AnalysisError, match=r"measured 4 sequences .* 5 samples were asked for \(missing: \[0\]"):
        analyse(loaded, dataset, max_samples=5, batch_size=2)
    out = tmp_path / "out"
    assert run_main("--path", image_setup["path"], "--data", image_setup["data"], "--out-dir", out, "--cpu") == 1
    captured = capsys.readouterr()
    assert f"measured {N_IMAGES - 1} sequences" in captured.err and "layer" not in captured.out
    assert not out.exists(), "nothing is written"

    duplicated = AnalysisResult(requested=2, records=[SequenceRecord(i, None, 4, [1]) for i in (0, 1, 1)])
    with pytest.raises(AnalysisError, match="duplicates: 1"):
        check_complete(duplicated)


# --------------------------------------------------------------------------- lra-text
def write_token_split(prefix, lines, dictionary):
    from fairseq.data import indexed_dataset

    builder = indexed_dataset.make_builder(f"{prefix}.bin", impl="mmap", vocab_size=len(dictionary))
    for line in lines:
        builder.add_item(dictionary.encode_line(line, add_if_not_exist=False, append_eos=True).int())
    builder.finalize(f"{prefix}.idx")


@pytest.mark.parametrize("two_documents", [False, True], ids=["listops", "retrieval"])
def test_text_task_excludes_padding_and_reports_each_document(tmp_path, two_documents, one_thread):
    from fairseq.data import Dictionary, data_utils

    data = write_lra_dictionaries(tmp_path / "text", labels=("0", "1"), two_documents=two_documents)
    src_dict = Dictionary.load(os.path.join(data, "src-bin", "dict.txt"))
    label_dict = Dictionary.load(os.path.join(data, "label-bin", "dict.txt"))
    rng = np.random.RandomState(1)
    words = ["[MAX", "[MIN", "[MED", "[SM", "]", *map(str, range(10))]
    docs = [[" ".join(rng.choice(words, size=n)) for n in rng.randint(5, 40, size=5)] for _ in range(2)]
    write_token_split(os.path.join(data, "src-bin", "valid"), docs[0], src_dict)
    if two_documents:
        write_token_split(os.path.join(data, "src1-bin", "valid"), docs[1], src_dict)
    write_token_split(os.path.join(data, "label-bin", "valid"), ["0", "1", "1", "0", "1"], label_dict)
    arch = "seqboat_lra_aan" if two_documents else "seqboat_lra_listop"
    model, _, cfg = build_lra(data, "lra-text", "--arch", arch, *TINY_LRA, "--chunk-size", "8")
    path = save_checkpoint(tmp_path / "checkpoint.pt", model, cfg, "LRACrossEntropyCriterion")
    out = tmp_path / "out"
    assert run_main("--path", path, "--data", data, "--out-dir", out, "--batch-size", 3, "--cpu") == 0
    assert not list(out.glob("confidence_*.png")), "no heat maps for text"
    assert png_size(out / "activation_time.png")[0] == "PNG"

    # each document alone (batch 1, no padding) must give the padded batch's numbers
    model, task = load(path, data)
    folders = ["src-bin", "src1-bin"] if two_documents else ["src-bin"]
    expected = {}
    with torch.no_grad():
        for d, folder in enumerate(folders):
            tokens = data_utils.load_indexed_dataset(os.path.join(data, folder, "valid"), task.source_dictionary)
            for i in range(len(tokens)):
                _, activations, mask = model.sentence_representation(tokens[i][None], torch.tensor([len(tokens[i])]))
                assert mask is None
                expected[i, d] = (len(tokens[i]), [a.active.double().mean().item() for a in activations])
    rows = read_csv(out / "activation_time.csv")
    assert len(rows) == 5 * len(folders)
    assert ("document" in rows[0]) == two_documents
    assert_columns_explained(out, rows)
    for row in rows:
        n_tokens, rates = expected[int(row["sample"]), int(row.get("document", 0))]
        assert int(row["n_tokens"]) == n_tokens  # pads never count
        # up to one near-tie router decision may differ between padded and unpadded runs
        assert [float(row[f"layer_{j}"]) for j in range(2)] == pytest.approx(rates, abs=1.01 / n_tokens)

    summary = json.loads((out / "activation_time.json").read_text())
    assert summary["n_samples"] == 5 and summary["n_sequences"] == 5 * len(folders)
    assert summary["layers"][0]["n_samples"] == 5 * len(folders)
    assert ("per_document" in summary) == two_documents
    table = np.array([[float(r[f"layer_{j}"]) for j in range(2)] for r in rows])
    assert [e["mean"] for e in summary["layers"]] == pytest.approx(table.mean(0), abs=1e-6)
    if two_documents:
        for d in range(2):
            doc = table[[int(r["document"]) == d for r in rows]]
            assert summary["per_document"][str(d)]["layers"][1]["max"] == pytest.approx(doc[:, 1].max(), abs=1e-6)


# --------------------------------------------------------------------------- language model
def test_language_model_blocks(tmp_path, one_thread):
    from fairseq.data import Dictionary

    data = write_byte_dictionary(tmp_path / "data-bin")
    dictionary = Dictionary.load(os.path.join(data, "dict.txt"))
    rng = np.random.RandomState(2)
    lines = [" ".join(map(str, rng.randint(0, 256, size=n))) for n in (40, 61, 17)]  # 118 + 3 </s> = 121
    write_token_split(os.path.join(data, "valid"), lines, dictionary)
    model, _, cfg = build_lm(data, "--arch", "seqboat_lm_tiny", "--tokens-per-sample", "64")
    path = save_checkpoint(tmp_path / "lm.pt", model, cfg, "CrossEntropyCriterion")
    out = tmp_path / "out"
    assert run_main("--path", path, "--data", data, "--out-dir", out, "--tokens-per-sample", 32,
                    "--heatmaps", 3) == 0
    summary = json.loads((out / "activation_time.json").read_text())
    assert summary["model"] == "lm" and summary["tokens_per_sample"] == 32 and summary["arch"] == "seqboat_lm_tiny"
    rows = read_csv(out / "activation_time.csv")
    assert [int(r["n_tokens"]) for r in rows] == [32, 32, 32, 25]
    assert "label" not in rows[0]
    assert not list(out.glob("confidence_*.png"))

    model, task = load(path, data, tokens_per_sample=32)
    task.load_dataset("valid")
    with torch.no_grad():
        for i, row in enumerate(rows):
            _, extra = model(task.dataset("valid")[i]["source"][None])
            rates = [a.active.double().mean().item() for a in extra["activations"]]
            assert [float(row[f"layer_{j}"]) for j in range(2)] == pytest.approx(rates, abs=1e-6)


# --------------------------------------------------------------------------- errors
def test_clear_errors(image_setup, tmp_path, capsys):
    data, path = str(image_setup["data"]), image_setup["path"]

    def error(*args):
        assert run_main(*args, "--out-dir", tmp_path / "out") == 1
        return capsys.readouterr().err

    assert "checkpoint not found" in error("--path", tmp_path / "missing.pt", "--data", data)
    assert "data directory not found" in error("--path", path, "--data", tmp_path / "nowhere")
    assert "split 'test' not found" in error("--path", path, "--data", data, "--split", "test")

    state = torch.load(path, weights_only=False)
    state["cfg"]["model"]["_name"] = "transformer_lm"
    torch.save(state, tmp_path / "transformer.pt")
    message = error("--path", tmp_path / "transformer.pt", "--data", data)
    assert "not a SeqBoat checkpoint" in message and "transformer_lm" in message

    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    assert "not a fairseq checkpoint" in error("--path", tmp_path / "plain.pt", "--data", data)
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    assert "cannot read checkpoint" in error("--path", tmp_path / "garbage.pt", "--data", data)
    assert not (tmp_path / "out").exists(), "nothing is written on errors"

    with pytest.raises(SystemExit):
        run_main("--path", path, "--data", data, "--out-dir", tmp_path / "out", "--max-samples", 0)
