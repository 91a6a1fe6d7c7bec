# One K3s server (control plane) and an Auto Scaling group of agents, all on
# Amazon Linux 2023 in the private subnets. Nobody logs in over SSH: Session
# Manager reaches the nodes, and `kubectl` goes through a port forward to the
# server (the README's Deploy section).

data "aws_ssm_parameter" "al2023" {
  name = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
}

locals {
  # IMDSv2 only, and one network hop: processes on the node reach the instance
  # profile, pods (one hop further) do not. Pods get AWS access only through
  # their own IAM roles (irsa.tf).
  metadata_options = {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }
}

resource "aws_instance" "server" {
  #checkov:skip=CKV_AWS_126:Five-minute basic metrics suffice for the control plane; the service exports its own metrics
  ami                    = data.aws_ssm_parameter.al2023.value
  instance_type          = var.server_instance_type
  subnet_id              = aws_subnet.private[0].id
  vpc_security_group_ids = [aws_security_group.server.id]
  iam_instance_profile   = aws_iam_instance_profile.server.name
  ebs_optimized          = true

  user_data_replace_on_change = false
  user_data = templatefile("${path.module}/templates/server.sh.tftpl", {
    region           = var.region
    k3s_channel      = var.k3s_channel
    token_secret_arn = aws_secretsmanager_secret.k3s_token.arn
    issuer_url       = local.oidc_issuer_url
    oidc_bucket      = aws_s3_bucket.oidc.bucket
    ebs_csi_role_arn = aws_iam_role.pod["ebs-csi-controller"].arn
    chart_versions   = var.chart_versions
  })

  metadata_options {
    http_endpoint               = local.metadata_options.http_endpoint
    http_tokens                 = local.metadata_options.http_tokens
    http_put_response_hop_limit = local.metadata_options.http_put_response_hop_limit
  }

  root_block_device {
    volume_type = "gp3"
    volume_size = 30
    encrypted   = true
  }

  tags = { Name = "${var.name}-k3s-server" }

  # The cluster's state lives on this machine: replacing it starts a new cluster.
  lifecycle {
    ignore_changes = [ami]
  }
}

resource "aws_launch_template" "agent" {
  name_prefix            = "${var.name}-k3s-agent-"
  image_id               = data.aws_ssm_parameter.al2023.value
  instance_type          = var.agent_instance_type
  vpc_security_group_ids = [aws_security_group.agents.id]
  ebs_optimized          = true

  user_data = base64encode(templatefile("${path.module}/templates/agent.sh.tftpl", {
    region                          = var.region
    k3s_channel                     = var.k3s_channel
    token_secret_arn                = aws_secretsmanager_secret.k3s_token.arn
    server_address                  = aws_instance.server.private_ip
    k3s_api_port                    = local.k3s_api_port
    ecr_credential_provider_version = var.ecr_credential_provider_version
  }))

  iam_instance_profile {
    arn = aws_iam_instance_profile.agent.arn
  }

  metadata_options {
    http_endpoint               = local.metadata_options.http_endpoint
    http_tokens                 = local.metadata_options.http_tokens
    http_put_response_hop_limit = local.metadata_options.http_put_response_hop_limit
  }

  block_device_mappings {
    device_name = "/dev/xvda"

    ebs {
      volume_type           = "gp3"
      volume_size           = 40
      encrypted             = true
      delete_on_termination = true
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = { Name = "${var.name}-k3s-agent" }
  }
}

resource "aws_autoscaling_group" "agents" {
  name                = "${var.name}-k3s-agents"
  min_size            = var.agent_min_size
  max_size            = var.agent_max_size
  desired_capacity    = var.agent_desired_capacity
  vpc_zone_identifier = aws_subnet.private[*].id
  target_group_arns   = [aws_lb_target_group.api.arn]

  # EC2, not ELB: with externalTrafficPolicy: Local a healthy agent without an
  # API pod fails the target group's check, and must not be replaced for that.
  health_check_type         = "EC2"
  health_check_grace_period = 300

  launch_template {
    id      = aws_launch_template.agent.id
    version = aws_launch_template.agent.latest_version
  }

  tag {
    key                 = "Name"
    value               = "${var.name}-k3s-agent"
    propagate_at_launch = true
  }

  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = 66
    }
  }
}
