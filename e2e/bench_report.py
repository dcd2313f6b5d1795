#!/usr/bin/env python3
"""Side-by-side benchmark tables from the JSON lines the bench binaries print.

Each line is one figure of one run: {"bench", "subject", "scenario", "metric", "value",
"unit"}. Runs repeat (e2e/bench alternates the two subjects over several rounds); this
prints, per bench, the median of each figure for nodus and for the stock component, and
their ratio (nodus / stock: below 1 is less time, memory or CPU for nodus; for a
throughput, above 1 is better). Writes the medians as JSON too.

usage: bench_report.py RESULTS.jsonl [--json OUT.json] [--markdown OUT.md]
"""

import argparse
import json
import statistics
import sys
from collections import OrderedDict

# Per bench: nodus's subject, then the stock references as (subject, column label); the
# ratio is taken against each.
PAIRS = {
    "node agent": ("nodus", [("stock", "kubelet + kube-proxy")]),
    "scheduler": ("nodus-control", [("kube-scheduler", "kube-scheduler")]),
    "service proxy": (
        "nodus",
        [("kube-proxy", "kube-proxy (nftables)"), ("kube-proxy (iptables)", "kube-proxy (iptables)")],
    ),
}
HIGHER_IS_BETTER = {"pods/s"}


def load(path):
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                sys.exit(f"{path}:{n}: not JSON: {err}")
    return records


def medians(records):
    """{bench: {(scenario, metric, unit): {subject: (median, runs)}}}, in first-seen order."""
    grouped = OrderedDict()
    for r in records:
        key = (r["scenario"], r["metric"], r["unit"])
        grouped.setdefault(r["bench"], OrderedDict()).setdefault(key, {}).setdefault(
            r["subject"], []
        ).append(float(r["value"]))
    return OrderedDict(
        (
            bench,
            OrderedDict(
                (key, {s: (statistics.median(v), len(v)) for s, v in subjects.items()})
                for key, subjects in figures.items()
            ),
        )
        for bench, figures in grouped.items()
    )


def fmt(value, unit):
    if value is None:
        return "—"
    if unit == "ms":
        return f"{value:.0f} ms"
    if abs(value) >= 100:
        return f"{value:.0f} {unit}"
    return f"{value:.1f} {unit}"


def ratio_text(ours, stock, unit):
    if ours is None or not stock:
        return "—"
    ratio = ours / stock
    better = ratio > 1 if unit in HIGHER_IS_BETTER else ratio < 1
    return f"{ratio:.2f}" + (" (better)" if better else "")


def markdown(table):
    out = []
    for bench, figures in table.items():
        ours, stocks = PAIRS.get(bench, ("nodus", [("stock", "stock")]))
        # A reference no run of this table measured (e.g. iptables mode left out) gets no column.
        stocks = [(s, label) for s, label in stocks if any(s in subjects for subjects in figures.values())]
        header = f"| scenario | figure | {ours} |"
        for _, label in stocks:
            header += f" {label} | nodus / {label} |"
        out.append(f"### {bench}\n")
        out.append(header + " runs |")
        out.append("|" + " --- |" * (4 + 2 * len(stocks)))
        for (scenario, metric, unit), subjects in figures.items():
            a, runs = subjects.get(ours, (None, 0)), [str(subjects.get(ours, (None, 0))[1])]
            row = f"| {scenario} | {metric} | {fmt(a[0], unit)} |"
            for stock, _ in stocks:
                b = subjects.get(stock, (None, 0))
                row += f" {fmt(b[0], unit)} | {ratio_text(a[0], b[0], unit)} |"
                runs.append(str(b[1]))
            out.append(row + f" {' / '.join(runs)} |")
        out.append("")
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("results")
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    args = parser.parse_args()
    table = medians(load(args.results))
    if not table:
        sys.exit(f"{args.results}: no figures")
    text = markdown(table)
    print(text)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(
                [
                    {
                        "bench": bench,
                        "scenario": scenario,
                        "metric": metric,
                        "unit": unit,
                        "median": {s: m for s, (m, _) in subjects.items()},
                        "runs": {s: n for s, (_, n) in subjects.items()},
                    }
                    for bench, figures in table.items()
                    for (scenario, metric, unit), subjects in figures.items()
                ],
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
