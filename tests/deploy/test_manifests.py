"""deploy/k3s: every overlay renders, validates strictly against the Kubernetes
version the cluster runs, passes checkov, and has the properties issue 15 asks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import stack
import yaml

# Custom resources whose schemas kubernetes-validate does not ship; the wiring
# tests check the fields of theirs that the stack relies on.
CUSTOM_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("secrets-store.csi.x-k8s.io/v1", "SecretProviderClass"),
}

SOUNDSTREAM = {"app.kubernetes.io/name": "soundstream"}


def component(docs: list[stack.Resource], name: str) -> stack.Resource:
    return stack.find(docs, "Deployment", f"soundstream-{name}")


@pytest.fixture(params=stack.OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def docs(overlay: str) -> list[stack.Resource]:
    return stack.resources(overlay)


@pytest.fixture(scope="module")
def checkov_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One checkov run over every rendered overlay (it takes seconds)."""
    directory = tmp_path_factory.mktemp("rendered")
    for name in stack.OVERLAYS:
        (directory / f"{name}.yaml").write_text(stack.rendered(name), encoding="utf-8")
    return stack.checkov(directory, "kubernetes")


def test_overlays_validate_strictly(docs: list[stack.Resource]) -> None:
    version = stack.kubernetes_version()
    unknown = set()
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            unknown.add((doc["apiVersion"], doc["kind"]))
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {path}: {error.message}")
    assert unknown <= CUSTOM_KINDS


def test_checkov_passes_on_the_rendered_overlays(checkov_report: dict[str, Any]) -> None:
    assert stack.checkov_problems(checkov_report) == []
    scanned = {Path(c["file_path"]).name for c in checkov_report["results"]["passed_checks"]}
    assert scanned == {f"{name}.yaml" for name in stack.OVERLAYS}


def test_every_container_runs_locked_down_with_limits(docs: list[stack.Resource]) -> None:
    for workload in stack.workloads(docs):
        pod = stack.pod_spec(workload)
        assert pod.get("automountServiceAccountToken") is False, workload["metadata"]["name"]
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for container in stack.containers(workload):
            where = f"{workload['metadata']['name']}/{container['name']}"
            context = container["securityContext"]
            non_root = context.get("runAsNonRoot", pod["securityContext"].get("runAsNonRoot"))
            assert non_root is True, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            assert container["resources"]["limits"]["cpu"], where
            assert container["resources"]["limits"]["memory"], where


def test_ingest_workers_are_sized_by_its_cpu_limit(docs: list[stack.Resource]) -> None:
    ingest = component(docs, "ingest")
    (server,) = stack.pod_spec(ingest)["containers"]
    assert server["resources"]["limits"]["cpu"] == "2"
    assert "SOUNDSTREAM_WORKERS" not in stack.environment(docs, server)


def probed_port(container: dict[str, Any], probe: str) -> tuple[str, int]:
    check = container[probe]["httpGet"]
    port = check["port"]
    if isinstance(port, str):
        (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return check["path"], port


@pytest.mark.parametrize("role", ["api", "ingest"])
def test_probes_ask_the_port_the_process_listens_on(docs: list[stack.Resource], role: str) -> None:
    workload = component(docs, role)
    (server,) = stack.pod_spec(workload)["containers"]
    env = stack.environment(docs, server)
    listens = int(env.get("SOUNDSTREAM_HTTP_PORT", "8080"))
    assert env["SOUNDSTREAM_ROLES"] == role
    assert probed_port(server, "livenessProbe") == ("/healthz", listens)
    assert probed_port(server, "startupProbe") == ("/healthz", listens)
    assert probed_port(server, "readinessProbe") == ("/readyz", listens)


def secret_sources(docs: list[stack.Resource], workload: stack.Resource) -> Iterator[str]:
    """Every secret a workload's pods can read: Kubernetes Secrets by name, and
    Secrets Manager objects through SecretProviderClasses."""
    pod = stack.pod_spec(workload)
    for volume in pod.get("volumes", []):
        if "secret" in volume:
            yield volume["secret"]["secretName"]
        for source in volume.get("projected", {}).get("sources", []):
            if "secret" in source:
                yield source["secret"]["name"]
        if "csi" in volume:
            name = volume["csi"]["volumeAttributes"]["secretProviderClass"]
            provider = stack.find(docs, "SecretProviderClass", name)
            for entry in yaml.safe_load(provider["spec"]["parameters"]["objects"]):
                yield entry["objectName"]
    for container in stack.containers(workload):
        for variable in container.get("env", []):
            reference = variable.get("valueFrom", {}).get("secretKeyRef")
            if reference:
                yield reference["name"]
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                yield source["secretRef"]["name"]


def test_api_pods_hold_no_broker_credentials(docs: list[stack.Resource]) -> None:
    api = component(docs, "api")
    secrets = list(secret_sources(docs, api))
    assert secrets, "the api reads its database URL and keys from secrets"
    assert not [s for s in secrets if "amqp" in s or "rabbitmq" in s], secrets
    for container in stack.containers(api):
        env = stack.environment(docs, container)
        assert not [name for name in env if "AMQP" in name], container["name"]
        assert env["SOUNDSTREAM_ROLES"] == "api"


def test_secrets_are_read_only_files_never_variables(docs: list[stack.Resource]) -> None:
    for workload in stack.workloads(docs):
        mounts_by_volume = {v["name"]: v for v in stack.pod_spec(workload).get("volumes", [])}
        for container in stack.containers(workload):
            assert not [
                v for v in container.get("env", []) if "secretKeyRef" in v.get("valueFrom", {})
            ]
            assert not [s for s in container.get("envFrom", []) if "secretRef" in s]
            for mount in container.get("volumeMounts", []):
                volume = mounts_by_volume.get(mount["name"], {})  # or a claim template
                if {"secret", "projected", "csi"} & volume.keys():
                    assert mount.get("readOnly") is True, (workload["metadata"], mount)
            for name, path in stack.environment(docs, container).items():
                if name.startswith("SOUNDSTREAM_") and name.endswith("_FILE"):
                    assert any(
                        path.startswith(m["mountPath"] + "/") and m.get("readOnly")
                        for m in container["volumeMounts"]
                    ), (container["name"], name)


def test_ingest_has_no_service_beyond_the_cluster(docs: list[stack.Resource]) -> None:
    ingest_labels = stack.pod_labels(component(docs, "ingest"))
    api_labels = stack.pod_labels(component(docs, "api"))
    for service in stack.find_all(docs, "Service"):
        selector = service["spec"].get("selector", {})
        if stack.selects(selector, ingest_labels):
            assert service["spec"].get("type", "ClusterIP") == "ClusterIP", service["metadata"]
    exposed = [
        s
        for s in stack.find_all(docs, "Service")
        if s["spec"].get("type") in ("NodePort", "LoadBalancer")
    ]
    assert len(exposed) == 1
    assert stack.selects(exposed[0]["spec"]["selector"], api_labels)


def test_api_scales_on_cpu_from_2_to_5(docs: list[stack.Resource]) -> None:
    (hpa,) = stack.find_all(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "soundstream-api",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 5)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert "replicas" not in component(docs, "api")["spec"]


def test_prod_scales_ingest_on_the_queue_with_keda() -> None:
    docs = stack.resources("prod")
    (scaled,) = stack.find_all(docs, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "soundstream-ingest"
    assert scaled["spec"]["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    assert scaled["spec"]["minReplicaCount"] >= 1
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "rabbitmq"
    assert trigger["metadata"]["queueName"] == "soundstream.features"
    assert trigger["metadata"]["vhostName"] == "/"
    assert trigger["metadata"]["mode"] == "QueueLength"
    authentication = stack.find(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    (host,) = authentication["spec"]["secretTargetRef"]
    assert host["parameter"] == "host"
    # That Secret is synced from the broker's SecretProviderClass.
    synced = {
        (s["secretName"], d["key"])
        for p in stack.find_all(docs, "SecretProviderClass")
        for s in p["spec"].get("secretObjects", [])
        for d in s["data"]
    }
    assert (host["name"], host["key"]) in synced
    # KEDA owns the replica count; kubectl apply must not reset it.
    assert "replicas" not in component(docs, "ingest")["spec"]


def test_dev_scales_ingest_by_hand() -> None:
    docs = stack.resources("dev")
    assert not stack.find_all(docs, "ScaledObject")
    assert component(docs, "ingest")["spec"]["replicas"] >= 1


def test_every_workload_has_a_disruption_budget(docs: list[stack.Resource]) -> None:
    budgets = stack.find_all(docs, "PodDisruptionBudget")
    for name in ("soundstream-api", "soundstream-ingest", "rabbitmq"):
        kind = "StatefulSet" if name == "rabbitmq" else "Deployment"
        labels = stack.pod_labels(stack.find(docs, kind, name))
        assert [b for b in budgets if stack.label_selector_matches(b["spec"]["selector"], labels)]


def test_migrate_runs_before_anything_serves(docs: list[stack.Resource]) -> None:
    job = stack.find(docs, "Job", "soundstream-migrate")
    (migrate,) = stack.pod_spec(job)["containers"]
    assert migrate["args"] == ["migrate"]
    assert stack.environment(docs, migrate)["SOUNDSTREAM_ROLES"] == "ingest"
    for role in ("api", "ingest"):
        workload = component(docs, role)
        (first, *_) = stack.pod_spec(workload)["initContainers"]
        (server,) = stack.pod_spec(workload)["containers"]
        assert first["args"] == ["migrate"]
        assert first["image"] == server["image"] == migrate["image"]


def test_each_workload_has_its_own_service_account(docs: list[stack.Resource]) -> None:
    accounts = {a["metadata"]["name"]: a for a in stack.find_all(docs, "ServiceAccount")}
    for name in ("soundstream-api", "soundstream-ingest", "soundstream-migrate"):
        kind = "Job" if name.endswith("migrate") else "Deployment"
        assert stack.pod_spec(stack.find(docs, kind, name))["serviceAccountName"] == name
        assert accounts[name]["automountServiceAccountToken"] is False


def allowed(
    docs: list[stack.Resource], labels: dict[str, str], direction: str
) -> list[dict[str, Any]]:
    """The rules of every NetworkPolicy that selects pods with ``labels``."""
    policy_type = direction.capitalize()
    rules = []
    for policy in stack.find_all(docs, "NetworkPolicy"):
        spec = policy["spec"]
        if policy_type in spec["policyTypes"] and stack.label_selector_matches(
            spec["podSelector"], labels
        ):
            rules += spec.get(direction, [])
    return rules


def ports(rules: list[dict[str, Any]]) -> set[object]:
    return {p.get("port") for rule in rules for p in rule.get("ports", [{}])}


def test_network_policies_deny_by_default(docs: list[stack.Resource]) -> None:
    deny = stack.find(docs, "NetworkPolicy", "default-deny")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}


def test_api_reaches_only_postgresql(docs: list[stack.Resource]) -> None:
    labels = stack.pod_labels(component(docs, "api"))
    assert ports(allowed(docs, labels, "egress")) == {53, 5432}


def test_ingest_reaches_only_the_broker_and_postgresql(docs: list[stack.Resource]) -> None:
    labels = stack.pod_labels(component(docs, "ingest"))
    egress = allowed(docs, labels, "egress")
    assert ports(egress) == {53, 5432, 5672}
    broker = stack.pod_labels(stack.find(docs, "StatefulSet", "rabbitmq"))
    (to_broker,) = [r for r in egress if ports([r]) == {5672}]
    assert [t for t in to_broker["to"] if stack.label_selector_matches(t["podSelector"], broker)]


def test_the_broker_takes_amqp_from_ingest_and_cluster_traffic_from_itself(
    docs: list[stack.Resource],
) -> None:
    broker = stack.pod_labels(stack.find(docs, "StatefulSet", "rabbitmq"))
    ingest = stack.pod_labels(component(docs, "ingest"))
    api = stack.pod_labels(component(docs, "api"))
    ingress = allowed(docs, broker, "ingress")

    def sources(port: int) -> list[dict[str, Any]]:
        return [f for r in ingress if port in ports([r]) for f in r["from"]]

    def admits(port: int, labels: dict[str, str]) -> bool:
        return any(
            "podSelector" in f
            and "namespaceSelector" not in f
            and stack.label_selector_matches(f["podSelector"], labels)
            for f in sources(port)
        )

    assert admits(5672, ingest)
    assert not admits(5672, api)
    for port in (4369, 25672):
        assert admits(port, broker)
    assert {4369, 25672} <= ports(allowed(docs, broker, "egress"))


def test_rabbitmq_is_three_nodes_with_their_own_volumes(docs: list[stack.Resource]) -> None:
    broker = stack.find(docs, "StatefulSet", "rabbitmq")
    assert broker["spec"]["replicas"] == 3
    (claim,) = broker["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    config = stack.find(docs, "ConfigMap", "rabbitmq")["data"]["rabbitmq.conf"]
    service = broker["spec"]["serviceName"]
    namespace = broker["metadata"]["namespace"]
    headless = stack.find(docs, "Service", service)
    assert headless["spec"]["clusterIP"] == "None"
    for index in range(3):
        node = f"rabbit@rabbitmq-{index}.{service}.{namespace}.svc.cluster.local"
        assert f"cluster_formation.classic_config.nodes.{index + 1} = {node}\n" in config
