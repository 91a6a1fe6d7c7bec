"""The alert rules, their unit tests and the example configuration through promtool;
the dashboard's shape; the PromQL reader the exposition test relies on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from monitoring import (
    ALERTS,
    ALERTS_TEST,
    EXAMPLE_CONFIG,
    ROOT,
    RULES_DIR,
    alert_rules,
    dashboard,
    dashboard_queries,
    metric_names,
    panels,
    run,
    tool,
)


def test_promtool_check_rules() -> None:
    result = run(tool("promtool"), "check", "rules", ALERTS.name, cwd=RULES_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_test_rules() -> None:
    result = run(tool("promtool"), "test", "rules", ALERTS_TEST.name, cwd=RULES_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    seen: dict[str, set[bool]] = {name: set() for name in alert_rules()}
    for group in yaml.safe_load(ALERTS_TEST.read_text())["tests"]:
        for case in group.get("alert_rule_test", []):
            seen[case["alertname"]].add(bool(case.get("exp_alerts")))
    assert {name: cases for name, cases in seen.items() if cases != {True, False}} == {}


def test_every_alert_has_for_severity_and_a_runbook() -> None:
    for name, rule in alert_rules().items():
        assert rule.get("for"), name
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), name


def test_promtool_checks_the_example_config(tmp_path: Path) -> None:
    promtool = tool("promtool")
    result = run(promtool, "check", "config", EXAMPLE_CONFIG.name, cwd=RULES_DIR)
    if "kubernetes_sd_configs not found" in result.stderr + result.stdout:
        # Debian builds Prometheus without Kubernetes discovery: check the rest of
        # the file with a static target in its place.
        config = yaml.safe_load(EXAMPLE_CONFIG.read_text())
        for job in config["scrape_configs"]:
            job.pop("kubernetes_sd_configs")
            job["static_configs"] = [{"targets": ["127.0.0.1:8080"]}]
        (tmp_path / EXAMPLE_CONFIG.name).write_text(yaml.safe_dump(config))
        (tmp_path / ALERTS.name).write_text(ALERTS.read_text())
        result = run(promtool, "check", "config", EXAMPLE_CONFIG.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def _pod_template(path: Path) -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text())["spec"]["template"])


def test_the_example_config_finds_the_pods_of_deploy_k3s() -> None:
    base = ROOT / "deploy" / "k3s" / "base"
    deployments = {role: base / role / "deployment.yaml" for role in ("api", "ingest")}
    if not all(path.exists() for path in deployments.values()):
        pytest.skip("deploy/k3s/base has no api and ingest Deployments")
    namespace = yaml.safe_load((base / "kustomization.yaml").read_text())["namespace"]
    (job,) = yaml.safe_load(EXAMPLE_CONFIG.read_text())["scrape_configs"]
    (discovery,) = job["kubernetes_sd_configs"]
    assert discovery["namespaces"]["names"] == [namespace]
    (selector,) = discovery["selectors"]
    key, value = selector["label"].split("=")
    keep = {
        tuple(r["source_labels"]): r["regex"]
        for r in job["relabel_configs"]
        if r.get("action") == "keep"
    }
    for role, path in deployments.items():
        template = _pod_template(path)
        labels = template["metadata"]["labels"]
        assert labels[key] == value, path
        assert labels["app.kubernetes.io/component"] in keep[
            ("__meta_kubernetes_pod_label_app_kubernetes_io_component",)
        ].split("|"), role
        ports = [p for c in template["spec"]["containers"] for p in c.get("ports", [])]
        assert keep[("__meta_kubernetes_pod_container_port_name",)] in {p["name"] for p in ports}


def test_dashboard_shape() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 36
    assert board["uid"] and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    cells: set[tuple[int, int]] = set()
    for panel in panels(board):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        if panel["type"] == "row":
            continue
        assert panel.get("description"), panel["title"]
        for target in [panel, *panel["targets"]]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert len(dashboard_queries(board)) >= 20


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        pytest.param(
            "histogram_quantile(0.95, sum by (route, le) (rate("
            'soundstream_http_request_duration_seconds_bucket{route=~"/v1/.*", le!="1e3"}'
            "[$__rate_interval])))",
            {"soundstream_http_request_duration_seconds_bucket"},
            id="histogram-with-matchers",
        ),
        pytest.param(
            "max by (namespace) (soundstream_broker_queue_messages) > 0 and on (namespace) "
            "max by (namespace) (soundstream_broker_queue_consumers) == 0",
            {"soundstream_broker_queue_messages", "soundstream_broker_queue_consumers"},
            id="set-operation",
        ),
        pytest.param(
            'label_values(soundstream_ready{namespace=~"$namespace"}, instance)',
            {"soundstream_ready"},
            id="grafana-variable",
        ),
        pytest.param(
            'changes(process_start_time_seconds{instance=~"$instance"}[30m]) > 2 and on (job) '
            "max_over_time(soundstream_ready[30m:1m] offset 5m)",
            {"process_start_time_seconds", "soundstream_ready"},
            id="subquery-offset",
        ),
        pytest.param(
            'sum({__name__="soundstream_frames_stored_total", job="soundstream_x"})',
            {"soundstream_frames_stored_total"},
            id="name-matcher",
        ),
        pytest.param(
            'count(up{job="soundstream_process_x"}) * 1.5e3', set(), id="lookalikes-in-strings"
        ),
    ],
)
def test_metric_names_of_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names
