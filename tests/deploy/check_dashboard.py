"""Structure of the Grafana dashboard, and its queries as a rules file for promtool.

usage: check_dashboard.py DASHBOARD_JSON RULES_OUT
Checks what Grafana needs to import and draw the dashboard (unique panel ids, a
Prometheus data-source variable on every panel and target, unique refIds, a grid that
fits 24 columns without overlaps) and that the panels the issue asks for exist. Writes
every query, Grafana variables replaced, to RULES_OUT as recording rules, so that
`promtool check rules RULES_OUT` parses each one with Prometheus's own parser.
Exits 1 naming every problem.
"""
import json
import sys

import yaml

import promql_sources

REQUIRED_PANELS = [
    "Store use",
    "Recall bandwidth against the link ceiling",
    "Recall latency percentiles",
    "Speculation hit rate",
    "Correction rate",
    "Stall time share",
    "Errors by code",
    "Sessions",
]
PANEL_TYPES = {"timeseries", "stat", "gauge", "table", "bargauge"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def check_variables(dashboard, problems):
    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    source = variables.get("datasource", {})
    if source.get("type") != "datasource" or source.get("query") != "prometheus":
        problems.append("no 'datasource' variable of type datasource over prometheus")
    if variables.get("instance", {}).get("type") != "query":
        problems.append("no 'instance' query variable")


def check_panel(panel, problems):
    title = panel.get("title")
    if panel.get("type") not in PANEL_TYPES:
        problems.append(f"panel {title!r}: unknown type {panel.get('type')!r}")
    if panel.get("datasource") != DATASOURCE:
        problems.append(f"panel {title!r}: data source is not ${{datasource}}")
    targets = panel.get("targets", [])
    if not targets:
        problems.append(f"panel {title!r}: no queries")
    ref_ids = [t.get("refId") for t in targets]
    if len(set(ref_ids)) != len(ref_ids) or None in ref_ids:
        problems.append(f"panel {title!r}: refIds {ref_ids} are not unique")
    for target in targets:
        if target.get("datasource") != DATASOURCE:
            problems.append(f"panel {title!r} {target.get('refId')}: data source")
        if not target.get("expr", "").strip():
            problems.append(f"panel {title!r} {target.get('refId')}: empty expr")
    if not panel.get("fieldConfig", {}).get("defaults", {}).get("unit"):
        problems.append(f"panel {title!r}: no unit")


def check_grid(panels, problems):
    cells = {}
    for panel in panels:
        g = panel.get("gridPos", {})
        x, y, w, h = (g.get(k) for k in ("x", "y", "w", "h"))
        if None in (x, y, w, h) or x < 0 or w <= 0 or h <= 0 or x + w > 24:
            problems.append(f"panel {panel.get('title')!r}: bad gridPos {g}")
            continue
        for cx in range(x, x + w):
            for cy in range(y, y + h):
                if (cx, cy) in cells:
                    problems.append(f"panels {cells[(cx, cy)]!r} and "
                                    f"{panel.get('title')!r} overlap at {cx},{cy}")
                    return
                cells[(cx, cy)] = panel.get("title")


def main():
    path, rules_out = sys.argv[1], sys.argv[2]
    with open(path) as f:
        dashboard = json.load(f)
    problems = []
    for key in ("uid", "title", "schemaVersion"):
        if not dashboard.get(key):
            problems.append(f"dashboard has no {key}")
    check_variables(dashboard, problems)
    panels = dashboard.get("panels", [])
    ids = [p.get("id") for p in panels]
    if len(set(ids)) != len(ids):
        problems.append(f"panel ids are not unique: {ids}")
    for panel in panels:
        if panel.get("type") != "row":
            check_panel(panel, problems)
    check_grid(panels, problems)
    titles = {p.get("title") for p in panels}
    problems += [f"missing panel {t!r}" for t in REQUIRED_PANELS if t not in titles]

    records = [{"record": f"dashboard:query_{i}", "expr": promql_sources.to_promql(e)}
               for i, (_, e) in enumerate(promql_sources.dashboard_expressions(path))]
    with open(rules_out, "w") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}, f)

    for problem in problems:
        print(f"PROBLEM: {problem}")
    print(f"{len(panels)} panels, {len(records)} queries, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
