"""Which experts fire for which kinds of series: routing shares grouped by series features.

For every window, each layer's token share per expert (the share of its top-k selections that
went to the expert, `RoutingStats.window_token_share`); then, per feature bin (trend weak /
moderate / strong, period none / <=16 / ..., see `quantization.series_features`), the mean of
those shares over the windows in the bin. A layer's shares in one bin sum to 1, so 1 / n_experts
is an even split and an expert far above it specialises in that kind of series.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from moecast.quantization.routing import RoutingStats
from moecast.quantization.series_features import FEATURES, SeriesFeatures


@dataclass(frozen=True)
class BinUsage:
    feature: str
    label: str
    windows: int
    share: np.ndarray  # [n_layers, n_experts] mean token share; NaN when the bin is empty


def usage_by_bin(features: Sequence[SeriesFeatures], stats: RoutingStats) -> list[BinUsage]:
    """One `BinUsage` per bin of every feature, in `FEATURES` order."""
    shares = stats.window_token_share
    if len(features) != len(shares):
        raise ValueError(f"{len(features)} feature rows for {len(shares)} routed windows")
    usage = []
    for feature in FEATURES:
        labels = np.array([feature.label(f) for f in features], dtype=object)
        for label in feature.labels:
            members = shares[labels == label]
            mean = members.mean(0) if len(members) else np.full(shares.shape[1:], np.nan)
            usage.append(BinUsage(feature.name, label, len(members), mean))
    return usage


def format_table(usage: Sequence[BinUsage], kept_experts: list[list[int]]) -> str:
    """Per layer, a row per bin: window count and each kept expert's token share in %."""
    lines = []
    for layer, kept in enumerate(kept_experts):
        lines.append(f"layer {layer}: token share per expert, % (even split {100 / len(kept):.0f})")
        lines.append(f"{'bin':<20}{'windows':>8}" + "".join(f"{'e' + str(e):>6}" for e in kept))
        for bin_ in usage:
            cells = "".join(
                f"{'-':>6}" if np.isnan(v) else f"{100 * v:>6.0f}" for v in bin_.share[layer, kept]
            )
            lines.append(f"{bin_.feature + ':' + bin_.label:<20}{bin_.windows:>8}{cells}")
        lines.append("")
    return "\n".join(lines).rstrip()


def write_usage_csv(usage: Sequence[BinUsage], kept_experts: list[list[int]], path: Path) -> Path:
    """Long format: feature, bin, windows, layer, expert, token_share (empty for empty bins)."""
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["feature", "bin", "windows", "layer", "expert", "token_share"])
        for bin_ in usage:
            for layer, kept in enumerate(kept_experts):
                for e in kept:
                    value = bin_.share[layer, e]
                    share = "" if np.isnan(value) else f"{value:.6f}"
                    writer.writerow([bin_.feature, bin_.label, bin_.windows, layer, e, share])
    return path


def write_windows_csv(
    names: Sequence[str], features: Sequence[SeriesFeatures], stats: RoutingStats, path: Path
) -> Path:
    """One row per window: its series, features, and every layer's token share per expert."""
    shares = stats.window_token_share
    layers, experts = shares.shape[1:]
    columns = [f"l{layer}_e{e}" for layer in range(layers) for e in range(experts)]
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["series", *SeriesFeatures.__dataclass_fields__, *columns])
        for name, f, share in zip(names, features, shares, strict=True):
            row = [f.trend_strength, f.seasonal_strength, f.period, f.noise, f.gap_share]
            writer.writerow([name, *row, *(f"{v:.6f}" for v in share.ravel())])
    return path


def usage_json(usage: Sequence[BinUsage], stats: RoutingStats) -> dict[str, Any]:
    return {
        "routing": stats.to_dict(),
        "bins": [
            {
                "feature": b.feature,
                "bin": b.label,
                "windows": b.windows,
                "token_share": [[None if np.isnan(v) else float(v) for v in r] for r in b.share],
            }
            for b in usage
        ],
    }


def write_json(document: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def plot_usage(usage: Sequence[BinUsage], kept_experts: list[list[int]], path: Path) -> Path:
    """A heatmap per layer: kept experts (rows) x feature bins (columns), token share."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server or a device
    import matplotlib.pyplot as plt

    columns = [f"{b.feature}\n{b.label}\n({b.windows})" for b in usage]
    boundaries = [i for i in range(1, len(usage)) if usage[i].feature != usage[i - 1].feature]
    filled = [b.share for b in usage if b.windows]
    top = max(float(np.nanmax(share)) for share in filled) if filled else 1.0
    figure, axes = plt.subplots(
        len(kept_experts),
        1,
        figsize=(1.0 + 0.75 * len(usage), 1.2 + 2.6 * len(kept_experts)),
        squeeze=False,
    )
    for layer, (ax, kept) in enumerate(zip(axes[:, 0], kept_experts, strict=True)):
        grid = np.stack([b.share[layer, kept] for b in usage], axis=1)  # [experts, bins]
        image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0.0, vmax=top)
        for (row, column), value in np.ndenumerate(grid):
            if not np.isnan(value):
                colour = "black" if value > 0.6 * top else "white"
                ax.text(
                    column, row, f"{value:.2f}", ha="center", va="center", fontsize=6, color=colour
                )
        for boundary in boundaries:
            ax.axvline(boundary - 0.5, color="white", linewidth=2)
        ax.set_yticks(range(len(kept)), labels=[f"expert {e}" for e in kept], fontsize=7)
        ax.set_xticks(
            range(len(usage)), labels=columns if layer == len(axes) - 1 else [], fontsize=7
        )
        ax.set_title(f"layer {layer}: token share (even split {1 / len(kept):.2f})", fontsize=9)
        figure.colorbar(image, ax=ax, fraction=0.02, pad=0.01)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
