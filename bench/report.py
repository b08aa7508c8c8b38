"""Turns the stored benchmark records into ``docs/results.md`` and its plots.

Every ``emit`` of a benchmark (``bench/common.py``) appends ``{"run": {...}, "load_1m": x,
"record": {...}}`` to ``bench/results/<script>.jsonl``. This script reads those files and writes,
for each script and each distinct command line, the latest run: its provenance (commit, library
hash, date, machine, torch, command, load average), one table per record kind (``"bench"``), and a
plot where the kind has one (``PLOTS``). Values are printed as stored: nothing here computes a
figure.

    python bench/report.py            # rewrite docs/results.md and docs/img/results/*.png
    python bench/report.py --check    # exit 1 unless both are what the stored records give

A plot's PNG carries the SHA-1 of the data it shows (PNG text chunk ``seqboat-data``), which
``--check`` compares with the records: a stale or missing plot fails the check, and so does a PNG
in the plot directory that the report does not list.
"""

import argparse
import collections
import hashlib
import json
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_RESULTS = os.path.join(REPO_ROOT, "bench", "results")
DEFAULT_OUT = os.path.join(REPO_ROOT, "docs", "results.md")
DEFAULT_IMG = os.path.join(REPO_ROOT, "docs", "img", "results")
PNG_KEY = "seqboat-data"


class ReportError(Exception):
    """Bad input: printed as one ``error:`` line."""


# --------------------------------------------------------------------------- reading
def load_runs(results_dir):
    """``{script: {command: [entries of its latest run]}}``; an entry is the stored JSON object."""
    runs = collections.defaultdict(lambda: collections.defaultdict(list))  # (script, command) -> run_id -> entries
    order = {}  # run_id -> position of its first record in the files
    if not os.path.isdir(results_dir):
        return {}
    for name in sorted(os.listdir(results_dir)):
        if not name.endswith(".jsonl"):
            continue
        path = os.path.join(results_dir, name)
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    run, record = entry["run"], entry["record"]
                    key = (run["script"], run["command"])
                    run["run_id"], run["date"], record["bench"]
                except (ValueError, KeyError, TypeError) as e:
                    raise ReportError(f"{path}:{number}: expected a JSON object with 'run' (script, command, "
                                      f"run_id, date) and 'record' (bench): {e}") from None
                runs[key][run["run_id"]].append(entry)
                order.setdefault(run["run_id"], len(order))
    out = collections.defaultdict(dict)
    for (script, command), by_run in runs.items():  # latest date; runs of one second: the one stored last
        latest = max(by_run, key=lambda rid: (by_run[rid][0]["run"]["date"], order[rid]))
        out[script][command] = by_run[latest]
    return {script: dict(sorted(cmds.items())) for script, cmds in sorted(out.items())}


# --------------------------------------------------------------------------- formatting
def cell(value):
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, dict)):
        value = json.dumps(value, separators=(",", ":"))
    return str(value).replace("|", "\\|")


def table(records):
    """A markdown table of ``records`` (dicts). Columns holding one value in every row are listed
    below the table instead."""
    columns = []
    for r in records:
        columns += [k for k in r if k != "bench" and k not in columns]
    values = {c: [json.dumps(r.get(c), sort_keys=True) for r in records] for c in columns}
    varying = [c for c in columns if len(records) == 1 or len(set(values[c])) > 1]
    constant = [c for c in columns if c not in varying]
    lines = []
    if len(records) > 1 or not constant:
        lines += ["| " + " | ".join(varying) + " |", "|" + "---|" * len(varying)]
        lines += ["| " + " | ".join(cell(r.get(c)) for c in varying) + " |" for r in records]
    if constant and len(records) > 1:
        lines += ["", "Same in every row: " + ", ".join(f"{c} = `{cell(records[0].get(c))}`" for c in constant) + "."]
    return lines


def provenance(entries):
    run = entries[0]["run"]
    loads = [e.get("load_1m") for e in entries if e.get("load_1m") is not None]
    commit = f"`{run.get('commit', 'unknown')}`" + (" with uncommitted changes" if run.get("dirty") else "")
    parts = [f"commit {commit}", f"library `{run.get('lib', '?')}`", run["date"], run.get("machine", "unknown machine"),
             f"torch {run.get('torch')}"]
    if loads:
        parts.append(f"load average (1 min) while recording {min(loads)}-{max(loads)}")
    text = "Measured: " + ", ".join(parts) + "."
    changed = sum(1 for e in entries if e.get("lib_now"))
    if changed:
        text += (f" **The library code changed during this run**: {changed} of {len(entries)} records ran "
                 "other code than the run started with.")
    return text


# --------------------------------------------------------------------------- plots
def _label_ema(r):
    trunc = r.get("truncation")
    return f"{r['dim']}x{r['seq_len']}x{r['batch_size']}" + (f"\nL_k={trunc}" if trunc else "")


def _label_tradeoff(r):
    rate = r.get("act_rate")
    return f"{r['model']} ({r['alloc_mb']:.0f} MB" + (f", rate {rate:.2f})" if rate is not None and r["model"] == "seqboat" else ")")


def _label_knob(r):
    text = "preset" if not r.get("knob") else f"{r['knob']}={r['knob_value']:g}"
    return text + (f" (rate {r['act_rate']:.2f})" if r.get("act_rate") is not None else "")


# record kind -> how to plot it (a spec, or a list of specs for several plots): "bar" (one group of bars per record, label(r), ys) or "line" (x, ys,
# optionally one line per value of `group` for a single y)
PLOTS = {
    "ema_conv": dict(kind="bar", label=_label_ema, ys=["fwd_ratio", "step_ratio"],
                     ylabel="FFT time / chunked time", title="MD-EMA: FFT vs chunked (> 1: chunked faster)"),
    "linear_rows": dict(kind="line", x="rows", ys=["f_linear_us", "linear_us"], logx=True,
                        ylabel="us per product", title="Few-row projections: F.linear vs modules.linear.Linear"),
    "activation_rate": dict(kind="line", x="rate", ys=["layer_step_ms", "gau_step_ms", "rest_step_ms"],
                            ylabel="ms (fwd+bwd)", title="One layer vs forced activation rate", filter="model"),
    "train_step": dict(kind="line", x="seq_len", ys=["ms"], group="model", logx=True, logy=True,
                       ylabel="ms per training step", title="LM training step"),
    "generation": dict(kind="line", x="context", ys=["ms_per_token_model"], group="model", logx=True, logy=True,
                       ylabel="ms per generated token", title="Incremental decoding"),
    "data_formats": dict(kind="bar", label=lambda r: r["format"], ys=["prep_s", "load_s"],
                         ylabel="seconds", title="LRA image data: text vs npy"),
    "lra_train_step": dict(kind="bar", label=lambda r: r["model"], ys=["ms"], ylabel="ms per step",
                           title="LRA training step"),
    "paper_efficiency_ratio": dict(
        kind="bar", ys=["speedup", "flop_ratio", "mem_ratio"], ylabel="SeqBoat vs baseline",
        label=lambda r: f"{r['setting']}\n{r['baseline']}\n" + (f"{100 * r['forced_rate']:g} %" if r.get("forced_rate")
                                                               else f"router {r['act_rate']:.2f}"),
        title="SeqBoat's training-step speed-up, the speed-up its FLOPs allow, and its memory ratio"),
    # bench/tradeoff.py: quality against speed, one plot per task (marker area = allocator peak), and the
    # router-knob curve of SeqBoat on the sweep task (points joined per knob, the preset on every curve)
    "tradeoff_summary": [
        dict(kind="scatter", split="task", x="steps_per_s", y="value", yerr="value_std", size="alloc_mb",
             where=lambda r: r.get("knob") is None, series=lambda r: r["model"], label=_label_tradeoff,
             title="{task}: quality against training-step speed (trained checkpoints, learned rates)",
             xlabel="training steps per second", ylabel="metric", name="race"),
        dict(kind="scatter", split="task", x="steps_per_s", y="value", yerr="value_std",
             where=lambda r: r["model"] == "seqboat", series=lambda r: r.get("knob") or "preset",
             label=_label_knob, join=True, needs=lambda rs: any(r.get("knob") for r in rs),
             title="{task}: SeqBoat's router knobs (quality against training-step speed)",
             xlabel="training steps per second", ylabel="metric", name="knobs"),
    ],
}


def plot_specs(kind, records):
    """``[(name suffix, spec, records)]``: the plots of one record kind, one per value of ``split``."""
    specs = PLOTS.get(kind) or []
    out = []
    for spec in specs if isinstance(specs, list) else [specs]:
        if "split" not in spec:
            out.append(("", spec, records))
            continue
        values = sorted({str(r.get(spec["split"])) for r in records})
        for value in values:
            part = [r for r in records if str(r.get(spec["split"])) == value]
            title = spec["title"].format(**{spec["split"]: value})
            out.append((f"-{spec['name']}-{slug(value)}", dict(spec, title=title), part))
    return out


def scatter_data(spec, records):
    """Points of a scatter plot: each with its series, label, x, y, error and marker size."""
    rows = [r for r in records if "error" not in r and spec["where"](r)
            and r.get(spec["x"]) is not None and r.get(spec["y"]) is not None]
    if not rows or ("needs" in spec and not spec["needs"](rows)):
        return None
    metric = rows[0].get(spec["ylabel"], spec["ylabel"])
    points = [{"series": spec["series"](r), "label": spec["label"](r), "x": r[spec["x"]], "y": r[spec["y"]],
               "yerr": r.get(spec.get("yerr")) or 0.0, "size": r.get(spec["size"]) if "size" in spec else None}
              for r in rows]
    # bits per byte / character: lower is better, drawn upside down so that up is better on every plot
    return {"points": sorted(points, key=lambda p: (p["series"], p["x"])), "ylabel": metric,
            "invert": metric.endswith("bpc") or metric.endswith("bpb"), "join": bool(spec.get("join"))}


def plot_data(spec, records):
    """The numbers a plot shows, as a JSON-able structure (its hash names the plot's content)."""
    if spec["kind"] == "scatter":
        return scatter_data(spec, records)
    needed = spec["ys"] + ([spec["x"]] if "x" in spec else []) + ([spec["group"]] if "group" in spec else [])
    records = [r for r in records if all(r.get(k) is not None for k in needed)]
    if spec.get("filter"):  # e.g. activation_rate: the router-forced rows, not the always-active one
        first = records[0][spec["filter"]] if records else None
        records = [r for r in records if r.get(spec["filter"]) == first]
    if not records:
        return None
    if spec["kind"] == "bar":
        return {"labels": [spec["label"](r) for r in records], "series": {y: [r[y] for r in records] for y in spec["ys"]}}
    if "group" in spec:
        series = collections.defaultdict(list)
        for r in records:
            series[str(r[spec["group"]])].append((r[spec["x"]], r[spec["ys"][0]]))
    else:
        series = {y: [(r[spec["x"]], r[y]) for r in records] for y in spec["ys"]}
    return {"series": {k: sorted(v) for k, v in sorted(series.items())}}


def data_hash(data):
    return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def draw(spec, data, path, digest):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if spec["kind"] == "scatter":
        draw_scatter(plt, spec, data, path, digest)
        return
    fig, ax = plt.subplots(figsize=(7, 3.6))
    if spec["kind"] == "bar":
        n, k = len(data["labels"]), len(data["series"])
        width = 0.8 / k
        for i, (name, ys) in enumerate(data["series"].items()):
            ax.bar([j + (i - (k - 1) / 2) * width for j in range(n)], ys, width, label=name)
        ax.set_xticks(range(n))
        ax.set_xticklabels(data["labels"], fontsize=7)
    else:
        for name, points in data["series"].items():
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
        ax.set_xlabel(spec["x"])
        if spec.get("logx"):
            ax.set_xscale("log", base=2)
        if spec.get("logy"):
            ax.set_yscale("log")
    ax.set_ylabel(spec["ylabel"])
    ax.set_title(spec["title"], fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={PNG_KEY: digest, "Software": None})
    plt.close(fig)


def draw_scatter(plt, spec, data, path, digest):
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    sizes = [p["size"] for p in data["points"] if p["size"]]
    biggest = max(sizes, default=1.0) or 1.0
    series = collections.defaultdict(list)
    for p in data["points"]:
        series[p["series"]].append(p)
    for index, (name, points) in enumerate(series.items()):
        color = f"C{index}"  # one colour per series, lines and markers alike
        if data["join"] and len(points) > 1:
            color = ax.plot([p["x"] for p in points], [p["y"] for p in points], alpha=0.5, color=color)[0].get_color()
        for i, p in enumerate(points):
            area = 60 + 900 * p["size"] / biggest if p["size"] else 40
            handle = ax.scatter([p["x"]], [p["y"]], s=area, alpha=0.7, color=color,
                                label=p["label"] if not data["join"] else (name if i == 0 else None))
            color = handle.get_facecolor()[0]
            ax.errorbar([p["x"]], [p["y"]], yerr=[p["yerr"]], fmt="none", ecolor=color, alpha=0.6)
            if data["join"]:
                ax.annotate(p["label"], (p["x"], p["y"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    if data["invert"]:
        ax.invert_yaxis()
    ax.set_xlabel(spec["xlabel"])
    ax.set_ylabel(data["ylabel"] + (" (lower is better, drawn upward)" if data["invert"] else ""))
    ax.set_title(spec["title"], fontsize=9)
    ax.legend(fontsize=7, markerscale=0.4 if not data["join"] else 1.0)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={PNG_KEY: digest, "Software": None})
    plt.close(fig)


def png_digest(path):
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.info.get(PNG_KEY)
    except OSError:
        return None


# --------------------------------------------------------------------------- the report
def slug(text):
    return "".join(c if c.isalnum() else "-" for c in text).strip("-")


def build(runs, img_rel):
    """The markdown text and the plots it lists: ``(text, {png name: (spec, data, digest)})``."""
    lines = ["# Benchmark results", "",
             "Generated by `python bench/report.py` from the records the benchmarks store in `bench/results/`",
             "(one JSONL file per script, appended by `emit` in `bench/common.py`); do not edit it by hand.",
             "Rerun a benchmark, then `python bench/report.py`; `python bench/report.py --check` (run by",
             "`tests/test_report.py`) fails while this page or its plots differ from the stored records.",
             "Each section is the latest run of one command line, with the commit and library hash it ran",
             "(`library`: a hash of `seqboat_fairseq/**/*.py` as run, uncommitted edits included), the date",
             "(UTC), the machine and the machine's load average while it ran (a load above the number of",
             "cores means other processes shared the CPU: compare ratios measured in one run, not times",
             "across runs). The meaning of each column is in `bench/README.md`.", ""]
    plots = {}
    if not runs:
        lines += ["No results are stored yet.", ""]
    for script, commands in runs.items():
        lines += [f"## {script}", ""]
        for command, entries in commands.items():
            lines += [f"### `{command}`", "", provenance(entries), ""]
            by_kind = collections.defaultdict(list)
            for e in entries:
                by_kind[e["record"]["bench"]].append(e["record"])
            for kind, records in by_kind.items():
                lines += [f"**{kind}** ({len(records)} record{'s' if len(records) != 1 else ''})", ""]
                lines += table(records) + [""]
                for suffix, spec, part in plot_specs(kind, records):
                    data = plot_data(spec, part)
                    if data is None:
                        continue
                    digest = data_hash(data)
                    name = f"{slug(kind)}{suffix}-{hashlib.sha1(command.encode()).hexdigest()[:8]}.png"
                    plots[name] = (spec, data, digest)
                    lines += [f"![{spec['title']}]({img_rel}/{name})", "", f"<!-- plot data sha1 {digest} -->", ""]
    return "\n".join(lines).rstrip("\n") + "\n", plots


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=DEFAULT_RESULTS, help="directory of <script>.jsonl files")
    p.add_argument("--out", default=DEFAULT_OUT, help="markdown file to write")
    p.add_argument("--img-dir", default=DEFAULT_IMG, help="directory of the plots (only the report's PNGs)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if --out or the plots are stale")
    args = p.parse_args(argv)
    try:
        runs = load_runs(args.results)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    img_rel = os.path.relpath(args.img_dir, os.path.dirname(os.path.abspath(args.out))).replace(os.sep, "/")
    text, plots = build(runs, img_rel)
    existing = sorted(n for n in os.listdir(args.img_dir) if n.endswith(".png")) if os.path.isdir(args.img_dir) else []
    if args.check:
        problems = []
        try:
            with open(args.out, encoding="utf-8") as f:
                if f.read() != text:
                    problems.append(f"{args.out} differs from what the records in {args.results} give")
        except OSError:
            problems.append(f"{args.out} is missing")
        for name, (_, _, digest) in sorted(plots.items()):
            if png_digest(os.path.join(args.img_dir, name)) != digest:
                problems.append(f"plot {os.path.join(args.img_dir, name)} is missing or shows other data")
        problems += [f"plot {os.path.join(args.img_dir, n)} is not listed by the report" for n in existing
                     if n not in plots]
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        if problems:
            print("error: run `python bench/report.py` to regenerate", file=sys.stderr)
            return 1
        print(f"{args.out}: in sync with {len(runs)} benchmark(s) and {len(plots)} plot(s)")
        return 0
    os.makedirs(args.img_dir, exist_ok=True)
    for name in existing:
        if name not in plots:
            os.remove(os.path.join(args.img_dir, name))
    for name, (spec, data, digest) in plots.items():
        path = os.path.join(args.img_dir, name)
        if png_digest(path) != digest:
            draw(spec, data, path + ".tmp.png", digest)
            os.replace(path + ".tmp.png", path)
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, args.out)
    print(f"wrote {args.out} ({len(runs)} benchmark(s), {len(plots)} plot(s) in {args.img_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
