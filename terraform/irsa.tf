# IAM roles for the pods' service accounts. K3s signs service-account tokens as
# the issuer below; its discovery document and public keys are published in an
# S3 bucket (the server's user data puts them there), and IAM trusts that issuer.
# The Secrets Store CSI driver's AWS provider and the EBS CSI controller exchange
# a pod's token for its role's credentials.

resource "aws_s3_bucket" "oidc" {
  #checkov:skip=CKV_AWS_18:Holds two small public documents; access logs would need a log bucket for nothing of value
  #checkov:skip=CKV_AWS_144:The documents are recreated by the K3s server at boot; a replica in another region adds nothing
  #checkov:skip=CKV_AWS_145:STS reads the documents anonymously, which a KMS-encrypted object would refuse; SSE-S3 encrypts them at rest
  #checkov:skip=CKV2_AWS_62:Nothing reacts to changes of the two documents
  #checkov:skip=CKV2_AWS_61:Two documents, overwritten in place; nothing to expire
  #checkov:skip=CKV2_AWS_6:It has one (aws_s3_bucket_public_access_block.oidc), which blocks ACLs but must allow the public bucket policy
  bucket = "${var.name}-oidc-${local.account_id}-${var.region}"
}

resource "aws_s3_bucket_ownership_controls" "oidc" {
  bucket = aws_s3_bucket.oidc.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_versioning" "oidc" {
  bucket = aws_s3_bucket.oidc.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "oidc" {
  bucket = aws_s3_bucket.oidc.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_public_access_block" "oidc" {
  #checkov:skip=CKV_AWS_54:The bucket policy must make the issuer's two documents public: STS fetches them without credentials
  #checkov:skip=CKV_AWS_56:As above: a public bucket policy is the point of this bucket
  bucket                  = aws_s3_bucket.oidc.id
  block_public_acls       = true
  ignore_public_acls      = true
  block_public_policy     = false
  restrict_public_buckets = false
}

data "aws_iam_policy_document" "oidc_bucket" {
  statement {
    sid     = "PublicIssuerDiscovery"
    actions = ["s3:GetObject"]
    resources = [
      "${aws_s3_bucket.oidc.arn}/.well-known/openid-configuration",
      "${aws_s3_bucket.oidc.arn}/openid/v1/jwks",
    ]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
  }

  statement {
    sid       = "TlsOnly"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.oidc.arn, "${aws_s3_bucket.oidc.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "oidc" {
  bucket     = aws_s3_bucket.oidc.id
  policy     = data.aws_iam_policy_document.oidc_bucket.json
  depends_on = [aws_s3_bucket_public_access_block.oidc]
}

locals {
  oidc_issuer_host = aws_s3_bucket.oidc.bucket_regional_domain_name
  oidc_issuer_url  = "https://${local.oidc_issuer_host}"

  # Role name suffix => the service account that may assume it, and the
  # secrets (secrets.tf) it may read: exactly what its SecretProviderClass mounts.
  pod_roles = {
    api = {
      namespace       = "soundstream"
      service_account = "soundstream-api"
      secrets         = ["database-url", "api-keys", "cursor-key"]
    }
    ingest = {
      namespace       = "soundstream"
      service_account = "soundstream-ingest"
      secrets         = ["database-url", "amqp-url"]
    }
    migrate = {
      namespace       = "soundstream"
      service_account = "soundstream-migrate"
      secrets         = ["database-url"]
    }
    rabbitmq = {
      namespace       = "soundstream"
      service_account = "rabbitmq"
      secrets         = ["rabbitmq"]
    }
    ebs-csi-controller = {
      namespace       = "kube-system"
      service_account = "ebs-csi-controller-sa"
      secrets         = []
    }
  }

  secret_arns = merge(
    { for name, secret in aws_secretsmanager_secret.app : name => secret.arn },
    { "api-keys" = aws_secretsmanager_secret.api_keys.arn },
  )
}

resource "aws_iam_openid_connect_provider" "k3s" {
  url            = local.oidc_issuer_url
  client_id_list = ["sts.amazonaws.com"]
}

data "aws_iam_policy_document" "pod_assume" {
  for_each = local.pod_roles

  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [aws_iam_openid_connect_provider.k3s.arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer_host}:sub"
      values   = ["system:serviceaccount:${each.value.namespace}:${each.value.service_account}"]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer_host}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "pod" {
  for_each = local.pod_roles

  name               = "${var.name}-${each.key}"
  assume_role_policy = data.aws_iam_policy_document.pod_assume[each.key].json
}

data "aws_iam_policy_document" "pod_secrets" {
  for_each = { for role, spec in local.pod_roles : role => spec if length(spec.secrets) > 0 }

  statement {
    sid       = "ReadOwnSecrets"
    actions   = ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"]
    resources = [for name in each.value.secrets : local.secret_arns[name]]
  }

  statement {
    sid       = "DecryptOwnSecrets"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.main.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["secretsmanager.${var.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "pod_secrets" {
  for_each = data.aws_iam_policy_document.pod_secrets

  name   = "read-own-secrets"
  role   = aws_iam_role.pod[each.key].id
  policy = each.value.json
}

resource "aws_iam_role_policy_attachment" "ebs_csi" {
  role       = aws_iam_role.pod["ebs-csi-controller"].name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonEBSCSIDriverPolicy"
}
