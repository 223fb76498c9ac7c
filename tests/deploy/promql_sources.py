"""The PromQL expressions of the project's dashboard and alert rules.

Shared by the metric-name check, the dashboard check and the Prometheus integration
test, so that all three look at the same expressions.
"""
import json
import re

import yaml

METRIC_NAME = re.compile(r"\bfreekv_[a-zA-Z0-9_]+")
LABEL_VALUES = re.compile(r"^label_values\((.*),\s*[a-zA-Z_][a-zA-Z0-9_]*\)$", re.S)

# Grafana's variables, replaced by values Prometheus accepts.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "${instance}": ".*",
    "$instance": ".*",
}


def dashboard_expressions(path):
    """(where, expr) for every panel target and every query variable of a dashboard."""
    with open(path) as f:
        dashboard = json.load(f)
    found = []
    for panel in dashboard.get("panels", []):
        for target in panel.get("targets", []):
            found.append((f"panel {panel.get('title')!r} target {target.get('refId')}",
                          target.get("expr", "")))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        query = query.get("query", "") if isinstance(query, dict) else query or ""
        match = LABEL_VALUES.match(query.strip())
        found.append((f"variable {variable.get('name')!r}",
                      match.group(1) if match else query))
    return found


def rule_expressions(path):
    """(where, expr) for every alerting and recording rule of a rules file."""
    with open(path) as f:
        rules = yaml.safe_load(f)
    found = []
    for group in rules.get("groups", []):
        for rule in group.get("rules", []):
            name = rule.get("alert") or rule.get("record")
            found.append((f"rule {name!r}", rule.get("expr", "")))
    return found


def to_promql(expr):
    """A dashboard expression with Grafana's variables replaced."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr
