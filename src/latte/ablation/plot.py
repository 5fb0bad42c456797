"""The study's figure: each metric against training step, one line per option (mean over seeds, band
from the lowest to the highest seed), like the paper's FVD-vs-iteration plots (Fig. 5/6)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np


def smooth(values: list[float], window: int) -> np.ndarray:
    """Trailing moving average (the first points average what exists so far)."""
    x = np.asarray(values, dtype=np.float64)
    if window <= 1 or len(x) < 2:
        return x
    sums = np.cumsum(np.insert(x, 0, 0.0))
    counts = np.minimum(np.arange(1, len(x) + 1), window)
    return (sums[1:] - sums[np.maximum(np.arange(1, len(x) + 1) - window, 0)]) / counts


def draw(path: Path, title: str, panels: list[tuple[str, dict[str, list[dict[int, float]]]]]) -> Path:
    """panels: (y label, {option: [ {step: value} per seed ]}); written atomically as PNG."""
    import matplotlib  # local: matplotlib takes ~0.5 s to import and `latte --help` imports this module

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(len(panels), 3)
    rows = (len(panels) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for ax, (ylabel, series) in zip(axes.flat, panels):
        for option, seeds in series.items():
            steps = sorted({s for seed in seeds for s in seed})
            if not steps:
                continue
            per_step = [[seed[s] for seed in seeds if s in seed] for s in steps]
            mean = np.array([np.mean(v) for v in per_step])
            line, = ax.plot(steps, mean, marker="o" if len(steps) < 12 else None, markersize=3, label=option)
            if len(seeds) > 1:
                ax.fill_between(steps, [min(v) for v in per_step], [max(v) for v in per_step],
                                color=line.get_color(), alpha=0.18, linewidth=0)
        if ylabel.startswith("train loss"):
            ax.set_yscale("log")  # the first steps' loss is tens of times the rest
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if axes.flat[0].get_legend_handles_labels()[0]:
        axes.flat[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=90)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a figure is for sharing
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
    return path
