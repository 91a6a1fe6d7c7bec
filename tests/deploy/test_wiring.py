"""What terraform/ and deploy/k3s must agree on, checked on the parsed HCL and
the rendered overlays: the NodePort the ALB targets, its health check, the
ports the security groups open, the subnets the prod overlay names, and which
secrets each role may read."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
import stack
import yaml

# What K3s listens on (its documented inbound rules): the Kubernetes API and
# supervisor on the server, flannel's VXLAN and the kubelet on every node.
K3S_LISTENS = {
    ("server", "tcp", 6443),
    ("server", "udp", 8472),
    ("server", "tcp", 10250),
    ("agents", "udp", 8472),
    ("agents", "tcp", 10250),
}


def node_port_service(overlay: str) -> stack.Resource:
    services = stack.find_all(stack.resources(overlay), "Service")
    (service,) = [s for s in services if s["spec"].get("type") == "NodePort"]
    return service


def node_port(overlay: str) -> int:
    (port,) = node_port_service(overlay)["spec"]["ports"]
    return int(port["nodePort"])


def listening() -> set[tuple[str, str, int]]:
    """(security group, protocol, port) of everything that listens behind each group."""
    tf = stack.terraform()
    # 8472/udp is flannel's VXLAN port: only so while the server says vxlan.
    server = (stack.TERRAFORM / "templates" / "server.sh.tftpl").read_text(encoding="utf-8")
    assert "\nflannel-backend: vxlan\n" in server
    # Agents join the server on the port terraform opens for it.
    user_data = tf.attribute(tf.resource("aws_launch_template", "agent"), "user_data")
    assert "'k3s_api_port': '${local.k3s_api_port}'" in user_data
    assert tf.value("${local.k3s_api_port}") == 6443
    ports = set(K3S_LISTENS)
    ports.add(("agents", "tcp", node_port("prod")))
    db = tf.resource("aws_db_instance", "main")
    ports.add(("rds", "tcp", tf.value(tf.attribute(db, "port"))))
    balancer = tf.resource("aws_lb", "api")
    (group,) = tf.attribute(balancer, "security_groups")
    for listener in tf.of_kind("aws_lb_listener").values():
        assert tf.attribute(listener, "load_balancer_arn") == "${aws_lb.api.arn}"
        ports.add((tf.group_name(group), "tcp", tf.value(tf.attribute(listener, "port"))))
    return ports


def test_the_alb_targets_the_api_nodeport_defined_in_one_place() -> None:
    tf = stack.terraform()
    target = tf.resource("aws_lb_target_group", "api")
    port = tf.value(tf.attribute(target, "port"))
    assert tf.attribute(target, "target_type") == "instance"
    assert port == node_port("dev") == node_port("prod")
    # One place: base/api/service.yaml. No overlay patches it, terraform reads it.
    written = [
        path.relative_to(stack.REPO).as_posix()
        for root in (stack.K3S, stack.TERRAFORM)
        for path in sorted(root.rglob("*"))
        if path.is_file()
        and ".terraform" not in path.parts  # providers, after a local `terraform init`
        and re.search(rb"\b%d\b" % port, path.read_bytes())
    ]
    assert written == ["deploy/k3s/base/api/service.yaml"]


def test_the_health_check_is_the_api_readiness_probe() -> None:
    tf = stack.terraform()
    check = tf.attribute(tf.resource("aws_lb_target_group", "api"), "health_check")
    assert tf.attribute(check, "path") == "/readyz"
    assert tf.attribute(check, "port") == "traffic-port"
    assert tf.attribute(check, "matcher") == "200"
    for overlay in stack.OVERLAYS:
        api = stack.find(stack.resources(overlay), "Deployment", "soundstream-api")
        (server,) = stack.pod_spec(api)["containers"]
        assert server["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # Local: the check reaches the pods of the node it asks, so a node serves
    # traffic only while an API pod on it is ready.
    assert node_port_service("prod")["spec"]["externalTrafficPolicy"] == "Local"


def test_the_alb_answers_metrics_itself() -> None:
    """Prometheus scrapes the pods inside the cluster; the internet gets no /metrics."""
    tf = stack.terraform()
    rule = tf.resource("aws_lb_listener_rule", "no_metrics")
    assert tf.attribute(rule, "listener_arn") == "${aws_lb_listener.https.arn}"
    action = tf.attribute(rule, "action")
    assert tf.attribute(action, "type") == "fixed-response"
    assert tf.attribute(tf.attribute(action, "fixed_response"), "status_code") == "404"
    condition = tf.attribute(tf.attribute(rule, "condition"), "path_pattern")
    assert "/metrics" in tf.attribute(condition, "values")


def test_every_security_group_port_is_one_something_listens_on() -> None:
    listens = listening()
    rules = stack.terraform().rules()
    assert rules
    for rule in rules:
        assert rule.from_port == rule.to_port, f"{rule.address}: open one port, not a range"
        if rule.direction == "ingress":
            assert (rule.group, rule.protocol, rule.from_port) in listens, rule
        elif rule.peer_group is not None:
            assert (rule.peer_group, rule.protocol, rule.from_port) in listens, rule
        else:  # out of the VPC through the NAT gateway
            assert (rule.cidr, rule.protocol, rule.from_port) == ("0.0.0.0/0", "tcp", 443), rule


def test_the_alb_reaches_nodes_on_the_nodeport_only_and_nodes_reach_rds_on_5432_only() -> None:
    rules = stack.terraform().rules()
    port = node_port("prod")

    def peers(group: str, direction: str) -> set[tuple[str | None, str, int]]:
        return {
            (r.peer_group or r.cidr, r.protocol, r.from_port)
            for r in rules
            if r.group == group and r.direction == direction
        }

    assert peers("alb", "egress") == {("agents", "tcp", port)}
    assert {r for r in peers("agents", "ingress") if r[0] == "alb"} == {("alb", "tcp", port)}
    assert peers("rds", "ingress") == {("agents", "tcp", 5432)}
    assert not peers("rds", "egress")
    assert ("rds", "tcp", 5432) in peers("agents", "egress")
    # Only the ALB takes traffic from addresses rather than from other groups.
    from_addresses = {(r.group, r.from_port) for r in rules if r.direction == "ingress" and r.cidr}
    assert from_addresses == {("alb", 443), ("alb", 80)}


def test_the_prod_overlay_names_the_vpc_subnets() -> None:
    tf = stack.terraform()
    public = tf.default("public_subnet_cidrs")
    private = tf.default("private_subnet_cidrs")
    docs = stack.resources("prod")
    settings = stack.config_map(docs, "soundstream")
    assert settings["SOUNDSTREAM_TRUSTED_PROXIES"].split(",") == public
    api_policy = stack.find(docs, "NetworkPolicy", "soundstream-api")
    balancer, monitoring = api_policy["spec"]["ingress"]
    assert [f["ipBlock"]["cidr"] for f in balancer["from"]] == public
    # and Prometheus, from its own namespace only, to the same port
    (scraper,) = monitoring["from"]
    assert scraper == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    }
    assert monitoring["ports"] == balancer["ports"]
    database = stack.find(docs, "NetworkPolicy", "soundstream-to-postgres")
    (rule,) = database["spec"]["egress"]
    assert [t["ipBlock"]["cidr"] for t in rule["to"]] == private
    db_port = tf.value(tf.attribute(tf.resource("aws_db_instance", "main"), "port"))
    assert [p["port"] for p in rule["ports"]] == [db_port]


def test_the_prod_image_and_region_are_terraforms() -> None:
    tf = stack.terraform()
    region = tf.default("region")
    repository = tf.attribute(tf.resource("aws_ecr_repository", "soundstream"), "name")
    docs = stack.resources("prod")
    for workload in stack.workloads(docs):
        for container in stack.containers(workload):
            if "soundstream" in container["image"]:
                assert re.fullmatch(
                    rf"\d{{12}}\.dkr\.ecr\.{region}\.amazonaws\.com/{repository}:[\w.\-]+",
                    container["image"],
                ), container["image"]
    for provider in stack.find_all(docs, "SecretProviderClass"):
        assert provider["spec"]["parameters"]["region"] == region


def secret_names() -> set[str]:
    """The names of terraform's Secrets Manager secrets, as the pods see them."""
    tf = stack.terraform()
    name = tf.default("name")
    values = tf.locals["secret_values"]
    listed = re.fullmatch(r"\$\{toset\(\[(.*)\]\)\}", tf.locals["secret_names"])
    assert listed, tf.locals["secret_names"]
    assert sorted(re.findall(r"['\"]([\w-]+)['\"]", listed.group(1))) == sorted(values)
    names = {f"{name}/{key}" for key in values}
    for resource in ("api_keys", "k3s_token"):
        body = tf.resource("aws_secretsmanager_secret", resource)
        names.add(tf.attribute(body, "name").replace("${var.name}", name))
    return names


def test_each_prod_role_mounts_exactly_the_secrets_its_iam_role_may_read() -> None:
    tf = stack.terraform()
    name = tf.default("name")
    roles = tf.locals["pod_roles"]
    docs = stack.resources("prod")
    accounts = {a["metadata"]["name"]: a for a in stack.find_all(docs, "ServiceAccount")}
    providers = {p["metadata"]["name"]: p for p in stack.find_all(docs, "SecretProviderClass")}
    known = secret_names()
    mounted_by_someone = set()
    for workload in stack.workloads(docs):
        pod = stack.pod_spec(workload)
        account = accounts[pod["serviceAccountName"]]
        arn = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        role = re.fullmatch(rf"arn:aws:iam::\d{{12}}:role/{name}-([\w-]+)", arn)
        assert role, arn
        spec = roles[role.group(1)]
        assert (spec["namespace"], spec["service_account"]) == (
            account["metadata"]["namespace"],
            account["metadata"]["name"],
        )
        for volume in pod["volumes"]:
            if "csi" not in volume:
                continue
            provider = providers[volume["csi"]["volumeAttributes"]["secretProviderClass"]]
            objects = yaml.safe_load(provider["spec"]["parameters"]["objects"])
            mounted = {o["objectName"] for o in objects}
            assert mounted <= known
            assert mounted == {f"{name}/{secret}" for secret in spec["secrets"]}
            mounted_by_someone.add(provider["metadata"]["name"])
    assert mounted_by_someone == set(providers)


@pytest.mark.parametrize("overlay", stack.OVERLAYS)
def test_mounted_files_are_the_ones_the_settings_name(overlay: str) -> None:
    docs = stack.resources(overlay)
    for workload in stack.workloads(docs):
        pod = stack.pod_spec(workload)
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in stack.containers(workload):
            for variable, path in stack.environment(docs, container).items():
                if not (variable.startswith("SOUNDSTREAM_") and variable.endswith("_FILE")):
                    continue
                (mount,) = [
                    m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")
                ]
                file_name = path.removeprefix(mount["mountPath"] + "/")
                assert file_name in files_of(docs, volumes[mount["name"]]), (container, path)


def files_of(docs: list[stack.Resource], volume: dict[str, object]) -> set[str]:
    if "projected" in volume:
        projected = volume["projected"]
        assert isinstance(projected, dict)
        return {i["path"] for s in projected["sources"] for i in s["secret"]["items"]}
    if "secret" in volume:
        secret = volume["secret"]
        assert isinstance(secret, dict)
        return {i["path"] for i in secret["items"]}
    csi = volume["csi"]
    assert isinstance(csi, dict)
    provider = stack.find(
        docs, "SecretProviderClass", csi["volumeAttributes"]["secretProviderClass"]
    )
    files = set()
    for entry in yaml.safe_load(provider["spec"]["parameters"]["objects"]):
        files.add(entry["objectAlias"])
        files |= {j["objectAlias"] for j in entry.get("jmesPath", [])}
    return files


def test_prod_broker_urls_name_the_broker_service_and_a_defined_user() -> None:
    tf = stack.terraform()
    prod = stack.resources("prod")
    service = stack.find(prod, "Service", "rabbitmq")
    host = f"rabbitmq.{service['metadata']['namespace']}.svc.cluster.local"
    assert tf.locals["rabbitmq_host"] == host
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    # Each URL's user is a user of the definitions, with the same password.
    definitions = tf.locals["rabbitmq_definitions"]
    users = dict(re.findall(r"\{'name': '([\w-]+)', 'password': '(\$\{[\w.]+\})'", definitions))
    values = tf.locals["secret_values"]
    for text, port in (
        (values["amqp-url"], ports["amqp"]),
        (values["rabbitmq"], ports["management"]),
    ):
        match = re.search(
            r"(?:amqp|http)://([\w-]+):(\$\{[\w.]+\})@\$\{local\.rabbitmq_host\}:(\d+)", text
        )
        assert match, text
        user, password, url_port = match.groups()
        assert users[user] == password
        assert int(url_port) == port


def test_dev_secrets_name_the_dev_services_and_users() -> None:
    dev = stack.resources("dev")
    secrets = stack.K3S / "overlays" / "dev" / "secrets"
    definitions = yaml.safe_load(
        (secrets / "rabbitmq-definitions.json").read_text(encoding="utf-8")
    )
    dev_users = {u["name"]: u["password"] for u in definitions["users"]}
    for file_name in ("amqp-url", "sensor-amqp-url"):
        url = urlsplit((secrets / file_name).read_text(encoding="utf-8"))
        assert url.hostname == "rabbitmq" and url.port == 5672
        assert dev_users[url.username or ""] == url.password
    database = urlsplit((secrets / "database-url").read_text(encoding="utf-8"))
    postgres = stack.find(dev, "Service", "postgres")
    assert database.hostname == "postgres"
    assert database.port == postgres["spec"]["ports"][0]["port"]
    password = (secrets / "postgres-password").read_text(encoding="utf-8")
    assert database.password == password
