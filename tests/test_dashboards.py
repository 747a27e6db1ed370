"""The Grafana artefacts are valid and use only metrics that creditgate exports."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest
import yaml
from prometheus_client import REGISTRY

import metering.metrics  # noqa: F401 - registers creditgate's metrics

GRAFANA = Path(__file__).resolve().parent.parent / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
METRIC = re.compile(r"\bcreditgate_[a-z0-9_]+")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported_names() -> set[str]:
    """Every series name creditgate can expose, from its registered metric families."""
    names = set()
    for family in REGISTRY.collect():
        if family.name.startswith("creditgate_"):
            names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


def datasource_uid() -> str:
    provisioning = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "creditgate.yaml").read_text()
    )
    [source] = provisioning["datasources"]
    return source["uid"]


def test_there_are_the_two_dashboards():
    titles = {orjson.loads(path.read_bytes())["title"] for path in DASHBOARDS}
    assert titles == {"creditgate: Usage & cost", "creditgate: Gateway health"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_valid_grafana_json(path):
    board = orjson.loads(path.read_bytes())
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert board["uid"] and board["title"]
    uid = datasource_uid()
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    occupied: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & occupied, f"panel {panel['id']} overlaps another"
        occupied |= cells
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}
        assert panel["fieldConfig"]["defaults"]["unit"], f"panel {panel['id']} has no unit"
        assert panel["targets"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid and target["expr"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert {"model", "provider"} <= set(variables)
    for variable in variables.values():
        assert variable["datasource"]["uid"] == uid
    if "usage" in path.name:
        assert "group" in variables


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_queries_use_only_exported_metrics(path):
    exported = exported_names()
    board = orjson.loads(path.read_bytes())
    used = {
        name
        for panel in board["panels"]
        for target in panel["targets"]
        for name in METRIC.findall(target["expr"])
    }
    used |= {name for v in board["templating"]["list"] for name in METRIC.findall(v["definition"])}
    assert used, "no creditgate metric in the dashboard"
    assert used <= exported, f"not exported: {sorted(used - exported)}"


def test_no_metric_carries_an_account_label_by_default():
    for family in REGISTRY.collect():
        if family.name.startswith("creditgate_") and family.name != (
            "creditgate_account_credits_charged"
        ):
            for sample in family.samples:
                assert not {"account", "key", "user"} & set(sample.labels)
