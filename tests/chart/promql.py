"""The PromQL the chart ships: every expression of the dashboards (panels and
variables) and of the prometheus-adapter rules, and the metric names they read."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import yaml

from .helm import ALL_ON, CHART, render

#: Grafana's built-in variables, as the tests evaluate them (Prometheus scrapes every second).
BUILTINS = {"$__rate_interval": "30s", "$__range": "2m"}

_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{")
_LABEL_VALUES = re.compile(r"^label_values\((?:(.+),\s*)?(\w+)\)$")


@dataclass(frozen=True)
class Query:
    where: str  # dashboard / panel / refId, for failure messages
    expr: str


@dataclass(frozen=True)
class VariableQuery:
    where: str
    match: str  # series selector
    label: str


def dashboards() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((CHART / "dashboards").glob("*.json"))}


def panel_queries() -> list[Query]:
    return [Query(f"{name} / {panel['title']} / {target['refId']}", target["expr"])
            for name, board in dashboards().items()
            for panel in board["panels"] for target in panel["targets"]]


def variable_queries() -> list[VariableQuery]:
    found = []
    for name, board in dashboards().items():
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                match = _LABEL_VALUES.match(variable["query"]["query"])
                assert match, f"{name} / ${variable['name']}: only label_values(SELECTOR, LABEL) is supported"
                found.append(VariableQuery(f"{name} / ${variable['name']}", match[1], match[2]))
    return found


def adapter_rules() -> list[dict]:
    [config_map] = [o for o in render(ALL_ON) if o["metadata"]["name"].endswith("-prometheus-adapter")]
    return yaml.safe_load(config_map["data"]["config.yaml"])["rules"]


def metric_names() -> set[str]:
    """Every metric name read by a dashboard or an adapter rule."""
    texts = [q.expr for q in panel_queries()] + [v.match for v in variable_queries()]
    texts += [rule["seriesQuery"] for rule in adapter_rules()]
    return {name for text in texts for name in _SELECTOR.findall(text)} | {
        v.match for v in variable_queries() if "{" not in v.match}


def substitute(expr: str, variables: dict[str, str]) -> str:
    """The expression as Grafana sends it: built-ins first, then the dashboard's own variables."""
    for key, value in {**BUILTINS, **{f"${k}": v for k, v in variables.items()}}.items():
        expr = expr.replace(key, value)
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr
