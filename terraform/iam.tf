# The nodes' instance profiles: what K3s itself needs, nothing the pods need
# (pods have their own roles, irsa.tf, and cannot reach these: IMDS hop limit 1).

data "aws_iam_policy_document" "ec2_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "server" {
  name               = "${var.name}-k3s-server"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
}

resource "aws_iam_role" "agent" {
  name               = "${var.name}-k3s-agent"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
}

# Session Manager instead of SSH: no key pairs, no port 22.
resource "aws_iam_role_policy_attachment" "ssm" {
  for_each = {
    server = aws_iam_role.server.name
    agent  = aws_iam_role.agent.name
  }

  role       = each.value
  policy_arn = "arn:${local.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

# Every node reads the join token at boot.
data "aws_iam_policy_document" "join_token" {
  statement {
    sid       = "ReadJoinToken"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [aws_secretsmanager_secret.k3s_token.arn]
  }

  statement {
    sid       = "DecryptJoinToken"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.main.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["secretsmanager.${var.region}.amazonaws.com"]
    }
  }
}

# The server publishes its service-account issuer's public keys.
data "aws_iam_policy_document" "server" {
  source_policy_documents = [data.aws_iam_policy_document.join_token.json]

  statement {
    sid     = "PublishIssuerDiscovery"
    actions = ["s3:PutObject"]
    resources = [
      "${aws_s3_bucket.oidc.arn}/.well-known/openid-configuration",
      "${aws_s3_bucket.oidc.arn}/openid/v1/jwks",
    ]
  }
}

# Agents pull the soundstream image.
data "aws_iam_policy_document" "agent" {
  source_policy_documents = [data.aws_iam_policy_document.join_token.json]

  statement {
    sid = "PullImage"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:BatchGetImage",
      "ecr:GetDownloadUrlForLayer",
    ]
    resources = [aws_ecr_repository.soundstream.arn]
  }

  # GetAuthorizationToken has no resource to narrow it to.
  statement {
    sid       = "RegistryLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }
}

resource "aws_iam_role_policy" "server" {
  name   = "k3s-server"
  role   = aws_iam_role.server.id
  policy = data.aws_iam_policy_document.server.json
}

resource "aws_iam_role_policy" "agent" {
  name   = "k3s-agent"
  role   = aws_iam_role.agent.id
  policy = data.aws_iam_policy_document.agent.json
}

resource "aws_iam_instance_profile" "server" {
  name = "${var.name}-k3s-server"
  role = aws_iam_role.server.name
}

resource "aws_iam_instance_profile" "agent" {
  name = "${var.name}-k3s-agent"
  role = aws_iam_role.agent.name
}
