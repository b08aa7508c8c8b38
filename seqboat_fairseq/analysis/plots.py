"""Figures: activation time per layer (the paper's figure 3) and router-confidence heat maps over
the image (figure 4). matplotlib's object API (no pyplot: no display, no global state).

The heat maps' colour scale is fitted to the data: the router confidence of an active token is
the larger of two probabilities, so it lies in [0.5, 1], and a trained router's active tokens
typically span a narrow band (e.g. 0.5-0.6); on a fixed 0-1 scale with skipped tokens at 0 every
map would look binary. The scale runs over the 2nd-98th percentile of the confidences of *this
sample's active tokens* (all layers, one scale per figure so its layers compare), values beyond
it saturate (the colour bar's triangles), skipped tokens are drawn grey, and the colour bar says
so, with the numbers.
"""

import math
from typing import Dict, Optional, Tuple

import numpy as np

from .measure import HeatmapInput

FIGURE_NAME = "activation_time.png"
PERCENTILES = (2.0, 98.0)
SKIPPED_COLOUR = "#d0d0d0"
MIN_SPAN = 1e-3  # a colour range narrower than this is widened around its centre


def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure  # no pyplot: no display, no global state (Agg on save)

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def error_bar_extents(means: np.ndarray, stds: np.ndarray) -> np.ndarray:
    """``(2, layers)`` lower and upper lengths of the error bars (percent): one standard deviation
    each way, cut at 0 % and 100 % (an activation time cannot leave [0, 100] %)."""
    return np.stack([np.minimum(stds, means), np.minimum(stds, 100.0 - means)])


def plot_activation_time(path: str, summary: Dict, title: str):
    """Bars of the per-layer mean activation time (percent) with one-std error bars clipped to
    [0, 100] % and the value above each bar; the mean over layers is a dashed line whose legend
    sits outside the axes, below them, so it never covers a bar, an error bar or a label.
    Saves the figure to ``path`` and returns it (for inspection)."""
    layers = summary["layers"]
    x = np.arange(len(layers))
    means = np.array([e["mean"] for e in layers]) * 100
    stds = np.array([e["std"] for e in layers]) * 100
    yerr = error_bar_extents(means, stds)
    fig = _new_figure(max(6.0, 0.7 * len(layers) + 2.5), 4.2)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(x, means, yerr=yerr, capsize=4, color="#4C72B0", edgecolor="black", linewidth=0.6,
           error_kw={"elinewidth": 1.0, "ecolor": "black"})
    for xi, m, top in zip(x, means, means + yerr[1]):
        # 2 points above the error bar's cap: the cap is at most 100 %, the axes run to 110 %
        ax.annotate(f"{m:.1f}", (xi, top), xytext=(0, 2), textcoords="offset points", ha="center",
                    va="bottom", fontsize=8)
    overall = summary["overall"]["mean"] * 100
    ax.axhline(overall, color="#C44E52", linestyle="--", linewidth=1, label=f"mean over layers {overall:.1f}%")
    ax.set_xticks(x)
    ax.set_xticklabels([str(i) for i in x])
    ax.set_xlabel("layer")
    ax.set_ylabel("activation time (% of tokens)")
    ax.set_ylim(0, 110)
    ax.set_yticks(range(0, 101, 20))
    fig.legend(loc="outside lower center", fontsize=8, frameon=False)  # constrained layout keeps it clear
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    fig.savefig(path)
    return fig


def image_side(length: int) -> Optional[int]:
    side = math.isqrt(length)
    return side if side * side == length else None


def confidence_range(confidence: np.ndarray, active: np.ndarray,
                     percentiles: Tuple[float, float] = PERCENTILES) -> Tuple[float, float]:
    """``(vmin, vmax)`` of the colour scale: the ``percentiles`` of the confidences of the active
    tokens (any shape; ``active`` the same shape), at least :data:`MIN_SPAN` wide and inside
    [0, 1]. No active token: the whole range a router confidence can take, (0.5, 1)."""
    values = np.asarray(confidence, dtype=np.float64)[np.asarray(active, dtype=bool)]
    if values.size == 0:
        return 0.5, 1.0
    vmin, vmax = (float(v) for v in np.percentile(values, percentiles))
    if vmax - vmin < MIN_SPAN:
        centre = (vmin + vmax) / 2
        vmin, vmax = centre - MIN_SPAN / 2, centre + MIN_SPAN / 2
        if vmin < 0.0:
            vmin, vmax = 0.0, MIN_SPAN
        elif vmax > 1.0:
            vmin, vmax = 1.0 - MIN_SPAN, 1.0
    return vmin, vmax


def colour_bar_label(vmin: float, vmax: float, percentiles: Tuple[float, float] = PERCENTILES) -> str:
    """Two short lines (the bar is as tall as one row of panels): what is shown, and the scale."""
    low, high = (f"{p:g}" for p in percentiles)
    return f"router confidence (active tokens)\nscale: p{low}-p{high} of this sample, {vmin:.3f}-{vmax:.3f}"


def plot_confidence(path: str, item: HeatmapInput, title: str):
    """Draws and saves the heat maps of one sample; returns the figure (for inspection)."""
    from matplotlib import colormaps

    side = image_side(item.pixels.size)
    layers = item.confidence.shape[0]
    panels = layers + 1
    rows = math.ceil(panels / 5)
    cols = math.ceil(panels / rows)
    fig = _new_figure(2.6 * cols + 1.0, 2.6 * rows + 0.7)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(panels)]
    axes[0].imshow(item.pixels.reshape(side, side), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    axes[0].set_title("input", fontsize=9)
    vmin, vmax = confidence_range(item.confidence, item.active)
    cmap = colormaps["viridis"].with_extremes(bad=SKIPPED_COLOUR)
    image = None
    for i in range(layers):
        values = np.ma.masked_array(item.confidence[i], mask=~item.active[i].astype(bool))
        image = axes[i + 1].imshow(values.reshape(side, side), cmap=cmap, vmin=vmin, vmax=vmax,
                                   interpolation="nearest")
        axes[i + 1].set_title(f"layer {i} ({100 * item.rates[i]:.1f}% active)", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    outcome = ""
    if item.label is not None:
        outcome = f" | label {item.label}, predicted {item.prediction}"
    fig.suptitle(f"{title}\nsample {item.sample}{outcome}: router confidence (grey = skipped)", fontsize=10)
    colour_bar = fig.colorbar(image, ax=axes, shrink=0.8, extend="both")
    colour_bar.set_label(colour_bar_label(vmin, vmax), fontsize=7)
    fig.savefig(path)
    return fig
