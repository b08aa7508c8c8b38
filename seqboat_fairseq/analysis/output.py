"""Writing the numbers: ``activation_time.csv`` (one row per sequence), the description of its
columns beside it (``activation_time_columns.md``, the columns of that file only) and
``activation_time.json`` (the summary)."""

import csv
import json
from typing import Dict, List, Tuple

import numpy as np

from .measure import AnalysisResult

JSON_NAME, CSV_NAME, COLUMNS_NAME = "activation_time.json", "activation_time.csv", "activation_time_columns.md"


def csv_columns(result: AnalysisResult) -> List[Tuple[str, str]]:
    """``(name, meaning)`` of every column of the CSV of ``result``, in order (Markdown)."""
    columns = [("sample", "index of the sample in the split (0-based, file order: the row of the split's data "
                          "files; language models: the block of `--tokens-per-sample` tokens)")]
    if result.documents > 1:
        columns.append(("document", "which document of the two-document sample (Retrieval): 0 = the first "
                                    "(`src-bin`), 1 = the second (`src1-bin`); each is a sequence of its own, run "
                                    "through the same encoder"))
    columns.append(("n_tokens", "tokens of the sequence, padding excluded (text: with `</s>`, and `<CLS>` under "
                                "`--sen-rep-type cls`; images: pixels; language models: the block's tokens); "
                                "the denominator of the `layer_*` columns"))
    if any(r.label is not None for r in result.records):
        columns += [("label", "gold class id of the sample"),
                    ("prediction", "class id the model predicts (argmax of its logits)"),
                    ("correct", "1 if `prediction` == `label`, else 0")]
    columns += [(f"layer_{i}", f"activation time of layer {i} (layers numbered from 0, as in the training "
                               f"metric `act_rate_l{i}`): the fraction (0..1) of the sequence's `n_tokens` that "
                               f"layer {i}'s router sends through the gated attention unit")
                for i in range(result.num_layers)]
    columns.append(("mean", "mean of the `layer_*` columns of the row (each layer weighted equally)"))
    return columns


def write_csv(path: str, result: AnalysisResult) -> None:
    two_docs = result.documents > 1
    classifier = any(r.label is not None for r in result.records)
    header = [name for name, _ in csv_columns(result)]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for r in result.records:
            row = [r.sample] + ([r.document] if two_docs else []) + [r.n_tokens]
            if classifier:
                row += [r.label, r.prediction, int(r.label == r.prediction)]
            row += [f"{x:.6f}" for x in r.rates] + [f"{float(np.mean(r.rates)):.6f}"]
            writer.writerow(row)


def write_columns(path: str, result: AnalysisResult, csv_name: str = CSV_NAME) -> None:
    """The meaning of each column of ``csv_name``, as a Markdown table."""
    lines = [f"# Columns of {csv_name}", "",
             "One row per sequence, sorted by sample (then document); fractions with 6 decimals. "
             "Pads never count as tokens or as active.", "",
             "| column | meaning |", "|---|---|"]
    lines += [f"| `{name}` | {meaning} |" for name, meaning in csv_columns(result)]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def write_json(path: str, summary: Dict) -> None:
    with open(path, "w") as f:
        json.dump(summary, f, indent=2)
