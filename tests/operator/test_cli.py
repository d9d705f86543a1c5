"""`pagoda operator` and `pagoda fetch-model` on the command line; operator settings."""

from __future__ import annotations

import pytest

from pagoda.cli import build_parser
from pagoda.operator import cli
from pagoda.operator.config import OperatorConfig


def test_operator_defaults_to_all_namespaces_standalone_with_liveness() -> None:
    args = build_parser().parse_args(["operator"])
    assert args.func is cli.run
    assert args.namespaces is None and args.peering is None
    assert args.liveness == "http://0.0.0.0:8080/healthz" and args.log_format == "json"
    assert args.metrics_port == cli.METRICS_PORT != 8080


def test_operator_metrics_port_or_none() -> None:
    assert build_parser().parse_args(["operator", "--metrics-port", "9100"]).metrics_port == 9100
    assert build_parser().parse_args(["operator", "--metrics-port", "0"]).metrics_port == 0


def test_operator_namespaces_and_peering() -> None:
    args = build_parser().parse_args(["operator", "-n", "a", "--namespace", "team-*", "--peering", "pagoda",
                                      "--priority", "10"])
    assert args.namespaces == ["a", "team-*"] and (args.peering, args.priority) == ("pagoda", 10)
    assert cli.peering_priority(args.priority) == 10


def test_identical_replicas_draw_distinct_priorities() -> None:
    """kopf pauses every replica that shares the highest priority: replicas
    started with the same arguments must not collide."""
    args = build_parser().parse_args(["operator", "--peering", "pagoda"])
    assert args.priority is None and args.peering_lifetime == cli.PEERING_LIFETIME_S
    drawn = {cli.peering_priority(args.priority) for _ in range(1000)}
    assert len(drawn) == 1000 and all(0 < p < 2**31 for p in drawn)


def test_namespaces_and_all_namespaces_exclude_each_other() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["operator", "-n", "a", "-A"])


def test_config_from_environment() -> None:
    config = OperatorConfig.from_env({"PAGODA_OPERATOR_DEFAULT_IMAGE": "img:1", "PAGODA_OPERATOR_RESYNC_SECONDS": "5",
                                      "OTHER": "x"})
    assert (config.default_image, config.resync_seconds) == ("img:1", 5.0)
    with pytest.raises(ValueError, match="unknown operator setting PAGODA_OPERATOR_TYPO"):
        OperatorConfig.from_env({"PAGODA_OPERATOR_TYPO": "1"})
    with pytest.raises(ValueError, match="expected float"):
        OperatorConfig.from_env({"PAGODA_OPERATOR_RESYNC_SECONDS": "soon"})
    assert [OperatorConfig().backoff(n) for n in (0, 1, 10)] == [5.0, 10.0, 300.0]
