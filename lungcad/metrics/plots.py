"""PNG plots of evaluation: the FROC curve with its intervals, and the reliability diagram."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from lungcad.metrics.curve import sensitivity_at
from lungcad.metrics.froc import FrocResult, fmt_rate
from lungcad.results.atomic import atomic_write_bytes


def _new_figure(width_in: float, height_in: float, dpi: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    atomic_write_bytes(path, buf.getvalue())


def plot_froc(result: FrocResult, path, *, title: str | None = None) -> Path:
    """Write the FROC curve as a PNG: the curve, the operating points, their CIs and the band.

    The x axis is logarithmic (base 2) from 1/8 to 8 FP/scan, as in the LUNA16 paper.
    """
    rates = np.asarray(list(result.sensitivities), dtype=float)
    lo_x, hi_x = float(rates.min()), float(rates.max())
    xs = np.geomspace(lo_x / 1.5, hi_x * 1.5, 400)
    ys = sensitivity_at(result.fps, result.sens, xs)
    fig = _new_figure(6.4, 4.8, 100)
    ax = fig.add_subplot(1, 1, 1)
    if len(result.band_fps):
        ax.fill_between(result.band_fps, result.band_low, result.band_high, color="tab:blue",
                        alpha=0.15, linewidth=0, label=f"{100 * result.confidence:g} % bootstrap band")
    ax.plot(xs, ys, color="tab:blue", lw=2, label=f"FROC (CPM {result.cpm:.3f})")
    pts = np.asarray(list(result.sensitivities.values()), dtype=float)
    if result.ci:
        lo = np.array([result.ci[r][0] for r in result.sensitivities])
        hi = np.array([result.ci[r][1] for r in result.sensitivities])
        ax.errorbar(rates, pts, yerr=[pts - lo, hi - pts], fmt="o", color="tab:red", capsize=3,
                    label=f"operating points, {100 * result.confidence:g} % CI")
    else:
        ax.plot(rates, pts, "o", color="tab:red", label="operating points")
    ax.set_xscale("log", base=2)
    ax.set_xlim(lo_x / 1.5, hi_x * 1.5)
    ax.set_xticks(rates)
    ax.set_xticklabels([fmt_rate(r) for r in rates])
    ax.set_ylim(0, 1.02)
    ax.set_yticks(np.linspace(0, 1, 11))
    ax.grid(True, which="both", alpha=0.3)
    ax.set_xlabel("Average number of false positives per scan")
    ax.set_ylabel("Sensitivity")
    ax.set_title(title or f"FROC: {result.n_nodules} nodules in {result.n_scans} scans")
    ax.legend(loc="lower right")
    fig.tight_layout()
    _save_png(fig, path)
    return Path(path)



def plot_calibration(metrics: dict[str, Any], path, *, title: str | None = None) -> Path:
    """Write a reliability diagram (observed vs predicted per bin, with counts) as a PNG."""
    bins = [b for b in metrics["calibration"] if b["n"]]
    fig = _new_figure(5.6, 6.4, 100)
    ax = fig.add_axes([0.14, 0.36, 0.8, 0.56])
    axh = fig.add_axes([0.14, 0.08, 0.8, 0.18], sharex=ax)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    if bins:
        ax.plot([b["mean_predicted"] for b in bins], [b["fraction_positive"] for b in bins], "o-",
                color="tab:blue", label="observed")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Fraction with cancer")
    auc = "n/a" if metrics["auc"] is None else f"{metrics['auc']:.3f}"
    ax.set_title(title or f"Calibration: n={metrics['n']}, log-loss {metrics['log_loss']:.3f}, AUC {auc}")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    cal = metrics["calibration"]
    axh.bar([(b["lo"] + b["hi"]) / 2 for b in cal], [b["n"] for b in cal],
            width=[(b["hi"] - b["lo"]) * 0.9 for b in cal], color="tab:blue", alpha=0.6)
    axh.set_xlabel("Predicted cancer probability")
    axh.set_ylabel("Patients")
    _save_png(fig, path)
    return Path(path)
