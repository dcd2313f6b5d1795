#!/usr/bin/python3
"""One PNG per benchmark scenario from e2e/bench's medians (summary.json of bench_report.py).

    bench_plot.py SUMMARY.json OUT_DIR

Scenarios, as the benchmark issue lists them: pod start, agent footprint, Service
programming, data plane, scheduling. Each is a horizontal bar chart per unit (ms, MiB, ...):
one bar per subject (nodus and each stock reference) for every figure. Runs with Debian's
python3-matplotlib (hence /usr/bin/python3: a python3 earlier on PATH may lack it).
"""

import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Scenario file name -> (title, which figures belong to it).
SCENARIOS = [
    ("pod-start", "Pod start and removal (one node)",
     lambda f: f["bench"] == "node agent" and f["unit"] == "ms"),
    ("agent-footprint", "Node agent footprint",
     lambda f: f["bench"] == "node agent" and f["unit"] != "ms"),
    ("service-programming", "Service programming",
     lambda f: f["bench"] == "service proxy" and not f["metric"].startswith("connect")),
    ("data-plane", "Connect latency through a ClusterIP",
     lambda f: f["bench"] == "service proxy" and f["metric"].startswith("connect")),
    ("scheduling", "Scheduling",
     lambda f: f["bench"] == "scheduler"),
]
# Subjects in a stable order, nodus's first.
ORDER = ["nodus", "nodus-control", "stock", "kube-proxy", "kube-proxy (iptables)", "kube-scheduler"]
LABEL = {"stock": "kubelet + kube-proxy", "kube-proxy": "kube-proxy (nftables)"}
COLOURS = ["#1f77b4", "#ff7f0e", "#7f7f7f", "#2ca02c"]


def plot(name, title, figures, out_dir):
    units = []
    for f in figures:
        if f["unit"] not in units:
            units.append(f["unit"])
    subjects = sorted({s for f in figures for s in f["median"]}, key=lambda s: ORDER.index(s) if s in ORDER else 99)
    rows = [len([f for f in figures if f["unit"] == u]) for u in units]
    fig, axes = plt.subplots(len(units), 1, figsize=(10, 1.2 + 0.3 * len(subjects) * sum(rows) + 0.6 * len(units)),
                             squeeze=False, gridspec_kw={"height_ratios": rows})
    height = 0.8 / max(1, len(subjects))
    for ax, unit in zip(axes[:, 0], units):
        group = [f for f in figures if f["unit"] == unit]
        labels = [f"{f['scenario']}: {f['metric']}" for f in group]
        for k, subject in enumerate(subjects):
            values = [f["median"].get(subject) for f in group]
            ys = [i + (k - (len(subjects) - 1) / 2) * height for i in range(len(group))]
            bars = ax.barh(ys, [v or 0 for v in values], height=height, color=COLOURS[k % len(COLOURS)],
                           label=LABEL.get(subject, subject))
            for bar, v in zip(bars, values):
                if v is not None:
                    ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {v:.0f}" if v >= 100 else f" {v:.3g}",
                            va="center", fontsize=7)
        ax.set_yticks(range(len(group)))
        ax.set_yticklabels(labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(unit)
        values = [v for f in group for v in f["median"].values() if v]
        if values and max(values) / min(values) > 100:
            ax.set_xscale("log")
        ax.margins(x=0.15)
    axes[0, 0].legend(fontsize=8, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    path = os.path.join(out_dir, f"{name}.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1], encoding="utf-8") as f:
        figures = json.load(f)
    os.makedirs(sys.argv[2], exist_ok=True)
    for name, title, belongs in SCENARIOS:
        chosen = [f for f in figures if belongs(f)]
        if chosen:
            print(plot(name, title, chosen, sys.argv[2]))


if __name__ == "__main__":
    main()
