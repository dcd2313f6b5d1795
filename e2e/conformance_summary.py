#!/usr/bin/env python3
"""Summarise the e2e suite's JUnit report as Markdown (e2e/conformance writes it to summary.md).

    conformance_summary.py JUNIT_XML [--title TEXT] [--note TEXT]... [--output FILE] [--strict]

Counts the specs (ginkgo's `[It]` leaves) that passed, failed and were skipped while running,
apart from those that focus/skip never selected (ginkgo lists them as skipped with no reason);
names each failure with a one-line reason from its <failure>/<error> text, and each suite node
(BeforeSuite, AfterSuite, ReportAfterSuite) that failed.

Exit status: 0 when the report was read (whatever the tests did), 2 when it is missing or not a
ginkgo JUnit report, 3 when a suite setup node failed (so no spec could run: a harness error);
with --strict, 4 when a spec failed or none passed (CI's subset must be all green).
"""

import argparse
import re
import sys
import xml.etree.ElementTree as ET
from collections import Counter

# Ginkgo writes each spec as "[<node type>] <full text>"; specs are "[It] ...".
NODE_TYPE = re.compile(r"^\[([A-Za-z]+)\]\s*")
# "In [It] at: /path/to/file.go:123 @ 01/02/26 15:04:05.000"
WHERE = re.compile(r"^In \[[A-Za-z]+\] at: (\S+?):(\d+)")
REASON_MAX = 240


def one_line_reason(text):
    """The failure's message as one line, with the file:line it failed at."""
    message, where, after = [], "", []
    for raw in (text or "").splitlines():
        line = raw.strip()
        m = WHERE.match(line)
        if m and not where:
            where = "%s:%s" % (m.group(1).rsplit("/", 1)[-1], m.group(2))
        elif line:
            (after if where else message).append(line)
    if message:
        message[0] = re.sub(r"^\[[A-Z]+\]\s*", "", message[0])
    if message == ["Test Panicked"] and after:
        # A panic's value follows the location.
        message = ["Test Panicked:", after[0]]
    reason = " ".join(part for part in message if part) or "(no message)"
    reason = re.sub(r"\s+", " ", reason)
    if len(reason) > REASON_MAX:
        reason = reason[: REASON_MAX - 1].rstrip() + "…"
    if where:
        reason += " (%s)" % where
    return reason


def md_escape(text):
    return text.replace("|", "\\|").replace("\n", " ")


def summarise(path):
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    if root.tag not in ("testsuites", "testsuite") or not suites:
        raise ValueError("not a JUnit report (root element <%s>)" % root.tag)

    result = {
        "passed": [],
        "failed": [],
        "skipped": [],
        "not_selected": 0,
        "pending": 0,
        "suite_failures": [],
        "time": 0.0,
        "properties": {},
    }
    for suite in suites:
        result["time"] += float(suite.get("time") or 0)
        for prop in suite.iter("property"):
            result["properties"][prop.get("name")] = prop.get("value") or ""
        for case in suite.iter("testcase"):
            name = case.get("name") or ""
            m = NODE_TYPE.match(name)
            node_type = m.group(1) if m else "It"
            spec = name[m.end():] if m else name
            status = (case.get("status") or "").lower()
            failure = case.find("failure")
            error = case.find("error")
            skipped = case.find("skipped")
            bad = failure if failure is not None else error
            if not status:
                status = "failed" if bad is not None else "skipped" if skipped is not None else "passed"

            if node_type != "It":
                if bad is not None or status in ("failed", "panicked", "timedout", "interrupted", "aborted"):
                    text = bad.text if bad is not None else ""
                    result["suite_failures"].append((node_type, spec, status, one_line_reason(text or (bad.get("message") if bad is not None else ""))))
                continue

            if status == "passed":
                result["passed"].append(spec)
            elif status == "pending":
                result["pending"] += 1
            elif status == "skipped":
                message = (skipped.get("message") if skipped is not None else "") or ""
                reason = re.sub(r"^skipped\s*(-\s*)?", "", message).strip()
                if reason:
                    result["skipped"].append((spec, reason.splitlines()[0][:REASON_MAX]))
                else:
                    # Never selected by --ginkgo.focus/--ginkgo.skip, or skipped after an abort.
                    result["not_selected"] += 1
            else:  # failed, timedout, panicked, interrupted, aborted
                text = (bad.text if bad is not None else "") or (bad.get("message") if bad is not None else "")
                result["failed"].append((spec, status, one_line_reason(text)))
    return result


def sig_of(spec):
    """The spec's owning SIG from its leading `[sig-x]` label (every upstream spec has one)."""
    m = re.match(r"\s*\[(sig-[^\]]+)\]", spec)
    return m.group(1) if m else "(none)"


def by_sig(result):
    """SIG -> [passed, failed, skipped]: one whole-suite run read as the per-SIG runs."""
    sigs = {}
    for spec in result["passed"]:
        sigs.setdefault(sig_of(spec), [0, 0, 0])[0] += 1
    for spec, _, _ in result["failed"]:
        sigs.setdefault(sig_of(spec), [0, 0, 0])[1] += 1
    for spec, _ in result["skipped"]:
        sigs.setdefault(sig_of(spec), [0, 0, 0])[2] += 1
    return sigs


def render(result, title, notes=()):
    passed, failed, skipped = len(result["passed"]), len(result["failed"]), len(result["skipped"])
    ran = passed + failed
    props = result["properties"]
    out = ["# %s" % title, ""]
    if props.get("FocusStrings"):
        out.append("- focus: `%s`" % props["FocusStrings"])
    for note in notes:
        out.append("- %s" % note)
    if props.get("RandomSeed"):
        out.append("- random seed: %s" % props["RandomSeed"])
    if props.get("SpecialSuiteFailureReason"):
        out.append("- suite: %s" % props["SpecialSuiteFailureReason"])
    out.append("- duration: %d min %d s" % divmod(int(result["time"]), 60))
    out.append("")
    out.append("| passed | failed | skipped | ran | pass rate | not selected |")
    out.append("| --- | --- | --- | --- | --- | --- |")
    rate = "%.1f%%" % (100.0 * passed / ran) if ran else "n/a"
    out.append("| %d | %d | %d | %d | %s | %d |" % (passed, failed, skipped, ran, rate, result["not_selected"]))
    out.append("")
    out.append("%d passed, %d failed, %d skipped" % (passed, failed, skipped))
    out.append("")

    sigs = by_sig(result)
    if len(sigs) > 1:
        out.append("## By SIG")
        out.append("")
        out.append("| SIG | passed | failed | skipped | pass rate |")
        out.append("| --- | --- | --- | --- | --- |")
        for sig, (p, f, s) in sorted(sigs.items()):
            out.append("| %s | %d | %d | %d | %s |" % (sig, p, f, s, "%.1f%%" % (100.0 * p / (p + f)) if p + f else "n/a"))
        out.append("")

    if result["suite_failures"]:
        out.append("## Suite nodes that failed")
        out.append("")
        for node_type, spec, status, reason in result["suite_failures"]:
            label = ("%s %s" % (node_type, spec)).strip()
            out.append("- **%s** (%s): %s" % (md_escape(label), status, md_escape(reason)))
        out.append("")

    if result["failed"]:
        out.append("## Failures")
        out.append("")
        out.append("| test | status | reason |")
        out.append("| --- | --- | --- |")
        for spec, status, reason in sorted(result["failed"]):
            out.append("| %s | %s | %s |" % (md_escape(spec), status, md_escape(reason)))
        out.append("")

    if result["skipped"]:
        out.append("## Skipped by the tests themselves")
        out.append("")
        counts = Counter(reason for _, reason in result["skipped"])
        out.append("| reason | tests |")
        out.append("| --- | --- |")
        for reason, n in counts.most_common():
            out.append("| %s | %d |" % (md_escape(reason), n))
        out.append("")
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("junit")
    parser.add_argument("--title", default="Conformance run")
    parser.add_argument("--note", action="append", default=[], help="a line for the header (repeatable)")
    parser.add_argument("--output", help="write the Markdown here instead of standard output")
    parser.add_argument("--strict", action="store_true", help="exit 4 unless every selected spec passed")
    args = parser.parse_args()
    try:
        result = summarise(args.junit)
    except (OSError, ET.ParseError, ValueError) as err:
        print("conformance_summary: cannot read %s: %s" % (args.junit, err), file=sys.stderr)
        return 2
    text = render(result, args.title, args.note) + "\n"
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    setup_failed = any(node in ("BeforeSuite", "SynchronizedBeforeSuite") for node, _, _, _ in result["suite_failures"])
    if setup_failed:
        return 3
    if args.strict and (result["failed"] or result["suite_failures"] or not result["passed"]):
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main())
