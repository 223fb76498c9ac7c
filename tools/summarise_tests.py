#!/usr/bin/env python3
"""Sums the test cases of the test targets that one `bazel test` ran.

Arguments: the bazel-testlogs directory and the build event (BEP) JSON file of the
run, which names the test targets of that run (stale logs of others are ignored).

Prints each failed case, then one line: "N passed, N failed[, N skipped]".
Exits non-zero when a case failed or when no test ran at all.
"""
import json
import os
import sys
import xml.etree.ElementTree as ET


def cases(path):
    root = ET.parse(path).getroot()
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            yield case, "failed"
        elif case.find("skipped") is not None or case.get("result") == "suppressed" \
                or case.get("status") == "notrun":
            yield case, "skipped"
        else:
            yield case, "passed"


def targets_of_run(bep_path):
    """Yields the test-log directory (relative) of each test target in the run."""
    seen = set()
    with open(bep_path) as f:
        for line in f:
            event = json.loads(line)
            summary = event.get("id", {}).get("testSummary")
            if not summary:
                continue
            label = summary["label"]
            if label in seen:
                continue
            seen.add(label)
            package, _, name = label.lstrip("@").lstrip("/").partition(":")
            yield os.path.join(package, name)


def main():
    testlogs, bep = sys.argv[1], sys.argv[2]
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    for target in targets_of_run(bep):
        dirpath = os.path.join(testlogs, target)
        files = os.listdir(dirpath) if os.path.isdir(dirpath) else []
        if "test.xml" not in files:
            print(f"FAILED {target}: no test.xml (did not run)")
            counts["failed"] += 1
            continue
        xml = os.path.join(dirpath, "test.xml")
        try:
            found = list(cases(xml))
        except ET.ParseError:
            found = []
        if not found:
            # A target that wrote no parseable cases counts as one case: pass or fail
            # by the exit status bazel recorded.
            status_failed = os.path.exists(os.path.join(dirpath, "test.log")) and \
                "FAILED" in open(os.path.join(dirpath, "test.log"), errors="replace").read()[-2000:]
            counts["failed" if status_failed else "passed"] += 1
            continue
        for case, outcome in found:
            counts[outcome] += 1
            if outcome == "failed":
                print(f"FAILED {target}: {case.get('classname')}.{case.get('name')}")
    line = f"{counts['passed']} passed, {counts['failed']} failed"
    if counts["skipped"]:
        line += f", {counts['skipped']} skipped"
    print(line)
    total = sum(counts.values())
    return 1 if counts["failed"] or total == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
