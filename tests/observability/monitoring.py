"""What tests/observability reads and runs: the dashboard and alert rules of
deploy/observability, the metric names their PromQL references, promtool and a real
Prometheus (Debian's ``prometheus`` package, installed by scripts/observability-tools)."""

from __future__ import annotations

import json
import re
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families
from testenv import installed_tool

ROOT = Path(__file__).resolve().parents[2]
OBSERVABILITY = ROOT / "deploy" / "observability"
DASHBOARD = OBSERVABILITY / "grafana" / "soundstream.json"
RULES_DIR = OBSERVABILITY / "prometheus"
ALERTS = RULES_DIR / "alerts.yml"
ALERTS_TEST = RULES_DIR / "alerts_test.yml"
EXAMPLE_CONFIG = RULES_DIR / "prometheus.yml"
INSTALLER = "scripts/observability-tools"

# --------------------------------------------------------------------------- tools


def tool(name: str) -> str:
    """The path of ``promtool`` or ``prometheus`` (Debian's ``prometheus`` package)."""
    return installed_tool(f"/usr/bin/{name}", INSTALLER, "prometheus")


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


# --------------------------------------------------------------------------- PromQL

_STRING = re.compile(r""""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`""")
_NAME_MATCHER = re.compile(r"""__name__\s*=\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')""")
_RANGE = re.compile(r"\[[^\]]*\]")
_MATCHERS = re.compile(r"\{[^}]*\}")
# An identifier not part of a longer one, a Grafana variable ($x) or a number (1.5e3).
_IDENTIFIER = re.compile(r"(?<![\w:$.])[A-Za-z_:][\w:]*")
OURS = ("soundstream_", "process_")


def metric_names(expr: str) -> set[str]:
    """The metric names of ours (``soundstream_*``, ``process_*``) an expression
    selects: identifiers outside strings, label matchers and range brackets (so
    label names, grouping labels, functions, keywords and durations drop out), and
    ``{__name__="..."}`` selectors."""
    names = {m.group(1)[1:-1] for m in _NAME_MATCHER.finditer(expr)}
    bare = _STRING.sub('""', expr)
    bare = _RANGE.sub("", bare)
    bare = _MATCHERS.sub("{}", bare)
    names |= {m.group() for m in _IDENTIFIER.finditer(bare)}
    return {name for name in names if name.startswith(OURS)}


# --------------------------------------------------------------------------- files


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside (collapsed) rows included."""
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries(board: dict[str, Any]) -> dict[str, str]:
    """Where -> PromQL: every panel target and every query variable."""
    found = {}
    for panel in panels(board):
        for target in panel.get("targets", []):
            if target.get("expr"):
                found[f"panel {panel['title']!r} target {target['refId']}"] = target["expr"]
    for variable in board.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            found[f"variable ${variable['name']}"] = (
                query["query"] if isinstance(query, dict) else query
            )
    return found


def alert_rules() -> dict[str, dict[str, Any]]:
    """Alert name -> rule, from alerts.yml."""
    rules = {}
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rules[rule["alert"]] = rule
    return rules


def references() -> dict[str, list[str]]:
    """Metric name -> where the dashboard or an alert rule uses it."""
    found: dict[str, list[str]] = defaultdict(list)
    for where, expr in dashboard_queries(dashboard()).items():
        for name in metric_names(expr):
            found[name].append(f"dashboard {where}")
    for alert, rule in alert_rules().items():
        for name in metric_names(rule["expr"]):
            found[name].append(f"alert {alert}")
    return dict(found)


# --------------------------------------------------------------------------- exposition


def families(text: str) -> dict[str, Any]:
    """Sample name (``..._total``, ``..._bucket``, a gauge's own name) -> its metric
    family, as prometheus_client's parser reads the exposition."""
    by_sample = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            by_sample[sample.name] = family
    return by_sample


# --------------------------------------------------------------------------- Prometheus


class Prometheus:
    """``prometheus`` on 127.0.0.1:``port`` with a storage directory of its own,
    scraping ``target`` every second and evaluating ``rules`` every second."""

    def __init__(self, binary: str, workdir: Path, port: int, target: str, rules: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = workdir / "prometheus.log"
        config = workdir / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(rules)],
                    "scrape_configs": [
                        {
                            "job_name": "soundstream",
                            "static_configs": [{"targets": [target]}],
                        }
                    ],
                }
            )
        )
        self._out = self.log.open("wb")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def get(self, path: str, **params: str) -> Any:
        """The ``data`` of an API answer (``status`` must be ``success``)."""
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited ({self.process.returncode}):\n{self.output()}")
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as client:
            answer = await client.get(path, params=params)
        body = answer.json()
        assert body["status"] == "success", (path, params, body)
        return body["data"]

    async def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited ({self.process.returncode}):\n{self.output()}")
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                return (await client.get(f"{self.url}/-/ready")).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._out.close()
