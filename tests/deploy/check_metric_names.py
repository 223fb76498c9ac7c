"""Every freekv_* name that a dashboard or an alert rule uses is an exposed series.

usage: check_metric_names.py EXPECTED_NAMES --dashboard FILE... --rules FILE...
Prints each name with where it is used; exits 1 naming any name not in EXPECTED_NAMES.
"""
import argparse
import sys

import promql_sources


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("expected")
    parser.add_argument("--dashboard", nargs="*", default=[])
    parser.add_argument("--rules", nargs="*", default=[])
    args = parser.parse_args()

    with open(args.expected) as f:
        expected = {line.strip() for line in f
                    if line.strip() and not line.startswith("#")}
    uses = {}
    sources = [promql_sources.dashboard_expressions(p) for p in args.dashboard]
    sources += [promql_sources.rule_expressions(p) for p in args.rules]
    for where, expr in (pair for source in sources for pair in source):
        for name in promql_sources.METRIC_NAME.findall(expr):
            uses.setdefault(name, set()).add(where)
    if not uses:
        print("no freekv_* names found: the extraction is broken")
        return 1
    unknown = sorted(set(uses) - expected)
    for name in sorted(uses):
        print(f"{'UNKNOWN ' if name in unknown else 'ok      '}{name}  "
              f"({len(uses[name])} uses)")
    for name in unknown:
        print(f"{name} is not exposed by the kvservice; used by: "
              f"{'; '.join(sorted(uses[name]))}")
    print(f"{len(uses)} names used, {len(unknown)} unknown; "
          f"{len(expected - set(uses))} exposed names unused")
    return 1 if unknown else 0


if __name__ == "__main__":
    sys.exit(main())
