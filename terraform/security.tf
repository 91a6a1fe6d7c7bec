# Least privilege between the tiers: the ALB reaches the agents on the API's
# NodePort only; nodes reach each other on the K3s ports only (pod-to-pod
# traffic, RabbitMQ's included, travels inside flannel's VXLAN); only the agents,
# where the pods run, reach RDS, on 5432 only. tests/deploy checks that every
# port here is one something listens on.

resource "aws_security_group" "alb" {
  name        = "${var.name}-alb"
  description = "Public HTTPS (and the redirect from HTTP) to the API"
  vpc_id      = aws_vpc.main.id
}

resource "aws_security_group" "server" {
  name        = "${var.name}-k3s-server"
  description = "K3s server: the Kubernetes API for the agents"
  vpc_id      = aws_vpc.main.id
}

resource "aws_security_group" "agents" {
  name        = "${var.name}-k3s-agents"
  description = "K3s agents: the API NodePort for the ALB, K3s ports between nodes"
  vpc_id      = aws_vpc.main.id
}

resource "aws_security_group" "rds" {
  name        = "${var.name}-rds"
  description = "PostgreSQL for the K3s agents"
  vpc_id      = aws_vpc.main.id
}

# --- ALB ---

resource "aws_vpc_security_group_ingress_rule" "alb_https" {
  for_each = toset(var.allowed_ingress_cidrs)

  security_group_id = aws_security_group.alb.id
  description       = "HTTPS from clients"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = local.https_port
  to_port           = local.https_port
}

resource "aws_vpc_security_group_ingress_rule" "alb_http" {
  #checkov:skip=CKV_AWS_260:Port 80 only answers with a redirect to HTTPS (the http listener in alb.tf), so a browser typing the bare name lands on TLS
  for_each = toset(var.allowed_ingress_cidrs)

  security_group_id = aws_security_group.alb.id
  description       = "HTTP from clients, answered with a redirect to HTTPS"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = local.http_port
  to_port           = local.http_port
}

resource "aws_vpc_security_group_egress_rule" "alb_to_agents" {
  security_group_id            = aws_security_group.alb.id
  description                  = "To the API NodePort on the agents"
  referenced_security_group_id = aws_security_group.agents.id
  ip_protocol                  = "tcp"
  from_port                    = local.api_node_port
  to_port                      = local.api_node_port
}

# --- agents ---

resource "aws_vpc_security_group_ingress_rule" "agents_from_alb" {
  security_group_id            = aws_security_group.agents.id
  description                  = "The API NodePort from the ALB"
  referenced_security_group_id = aws_security_group.alb.id
  ip_protocol                  = "tcp"
  from_port                    = local.api_node_port
  to_port                      = local.api_node_port
}

# Flannel VXLAN and the kubelet, from every node (server and agents).
resource "aws_vpc_security_group_ingress_rule" "agents_vxlan" {
  for_each = {
    server = aws_security_group.server.id
    agents = aws_security_group.agents.id
  }

  security_group_id            = aws_security_group.agents.id
  description                  = "Flannel VXLAN from the ${each.key}"
  referenced_security_group_id = each.value
  ip_protocol                  = "udp"
  from_port                    = local.flannel_vxlan_port
  to_port                      = local.flannel_vxlan_port
}

resource "aws_vpc_security_group_ingress_rule" "agents_kubelet" {
  for_each = {
    server = aws_security_group.server.id
    agents = aws_security_group.agents.id
  }

  security_group_id            = aws_security_group.agents.id
  description                  = "Kubelet (logs, exec, metrics) from the ${each.key}"
  referenced_security_group_id = each.value
  ip_protocol                  = "tcp"
  from_port                    = local.kubelet_port
  to_port                      = local.kubelet_port
}

resource "aws_vpc_security_group_egress_rule" "agents_to_server" {
  for_each = {
    api     = { protocol = "tcp", port = local.k3s_api_port }
    vxlan   = { protocol = "udp", port = local.flannel_vxlan_port }
    kubelet = { protocol = "tcp", port = local.kubelet_port }
  }

  security_group_id            = aws_security_group.agents.id
  description                  = "To the K3s server (${each.key})"
  referenced_security_group_id = aws_security_group.server.id
  ip_protocol                  = each.value.protocol
  from_port                    = each.value.port
  to_port                      = each.value.port
}

resource "aws_vpc_security_group_egress_rule" "agents_to_agents" {
  for_each = {
    vxlan   = { protocol = "udp", port = local.flannel_vxlan_port }
    kubelet = { protocol = "tcp", port = local.kubelet_port }
  }

  security_group_id            = aws_security_group.agents.id
  description                  = "To the other agents (${each.key})"
  referenced_security_group_id = aws_security_group.agents.id
  ip_protocol                  = each.value.protocol
  from_port                    = each.value.port
  to_port                      = each.value.port
}

resource "aws_vpc_security_group_egress_rule" "agents_to_rds" {
  security_group_id            = aws_security_group.agents.id
  description                  = "PostgreSQL on RDS"
  referenced_security_group_id = aws_security_group.rds.id
  ip_protocol                  = "tcp"
  from_port                    = aws_db_instance.main.port
  to_port                      = aws_db_instance.main.port
}

resource "aws_vpc_security_group_egress_rule" "agents_https" {
  security_group_id = aws_security_group.agents.id
  description       = "HTTPS out through the NAT gateway: ECR and other registries, AWS APIs, K3s"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = local.https_port
  to_port           = local.https_port
}

# --- server ---

resource "aws_vpc_security_group_ingress_rule" "server_from_agents" {
  for_each = {
    api     = { protocol = "tcp", port = local.k3s_api_port }
    vxlan   = { protocol = "udp", port = local.flannel_vxlan_port }
    kubelet = { protocol = "tcp", port = local.kubelet_port }
  }

  security_group_id            = aws_security_group.server.id
  description                  = "From the agents (${each.key})"
  referenced_security_group_id = aws_security_group.agents.id
  ip_protocol                  = each.value.protocol
  from_port                    = each.value.port
  to_port                      = each.value.port
}

resource "aws_vpc_security_group_egress_rule" "server_to_agents" {
  for_each = {
    vxlan   = { protocol = "udp", port = local.flannel_vxlan_port }
    kubelet = { protocol = "tcp", port = local.kubelet_port }
  }

  security_group_id            = aws_security_group.server.id
  description                  = "To the agents (${each.key})"
  referenced_security_group_id = aws_security_group.agents.id
  ip_protocol                  = each.value.protocol
  from_port                    = each.value.port
  to_port                      = each.value.port
}

resource "aws_vpc_security_group_egress_rule" "server_https" {
  security_group_id = aws_security_group.server.id
  description       = "HTTPS out through the NAT gateway: K3s, Helm charts, images, AWS APIs"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = local.https_port
  to_port           = local.https_port
}

# --- RDS ---

resource "aws_vpc_security_group_ingress_rule" "rds_from_agents" {
  security_group_id            = aws_security_group.rds.id
  description                  = "PostgreSQL from the agents"
  referenced_security_group_id = aws_security_group.agents.id
  ip_protocol                  = "tcp"
  from_port                    = aws_db_instance.main.port
  to_port                      = aws_db_instance.main.port
}
