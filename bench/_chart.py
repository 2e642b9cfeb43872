"""The end-to-end chart: per setup, the response latency the caller waits and the billed time
after the response, stacked (together they are the billed duration), one panel per receiver delay.
matplotlib is a bench-only dependency, imported here only."""

from __future__ import annotations

import textwrap
from pathlib import Path

from _common import median
from _lambda import Samples


def overhead_chart(panels: dict[float, dict[str, Samples]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5.2), squeeze=False)
    for ax, (delay, setups) in zip(axes[0], panels.items(), strict=True):
        labels = [textwrap.fill(label.replace("`", ""), 16) for label in setups]
        latency = [median(s.latency) for s in setups.values()]
        post = [median(s.post) for s in setups.values()]
        positions = range(len(labels))
        ax.bar(positions, latency, color="#1d4aff", label="response latency (the caller waits)")
        ax.bar(positions, post, bottom=latency, color="#f9bd2b", label="post-runtime (billed after the response)")
        top = max(a + b for a, b in zip(latency, post, strict=True))
        for x, (a, b) in enumerate(zip(latency, post, strict=True)):
            ax.annotate(
                f"{a:.1f} + {b:.1f}", (x, a + b), xytext=(0, 3), textcoords="offset points", ha="center", fontsize=8
            )
        ax.set_ylim(0, top * 1.3)  # room for the legend above the bars
        ax.set_xticks(list(positions), labels, fontsize=7.5)
        ax.set_ylabel("ms per invocation, median")
        ax.set_title(f"receiver answers after {delay:.0f} ms")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    figure.suptitle("One invocation (10 spans, 2 generations) in the local Lambda environment: latency + billed time")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
