terraform {
  # 1.10: S3 state locking without DynamoDB (backend.hcl.example).
  required_version = ">= 1.10"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 5.81: an OIDC provider without a thumbprint list (irsa.tf).
      version = ">= 5.81, < 7.0"
    }
    random = {
      source  = "hashicorp/random"
      version = ">= 3.6, < 4.0"
    }
  }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = {
      Project   = var.name
      ManagedBy = "terraform"
    }
  }
}

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  azs        = var.availability_zones

  # The API's NodePort has one home: the Service manifest. The target group,
  # the security groups and the manifests can therefore never disagree.
  api_service   = yamldecode(file("${path.module}/../deploy/k3s/base/api/service.yaml"))
  api_node_port = one([for p in local.api_service.spec.ports : p.nodePort if p.name == "http"])

  # What listens where, for the security groups (security.tf).
  k3s_api_port       = 6443 # K3s supervisor and Kubernetes API, on the server
  kubelet_port       = 10250
  flannel_vxlan_port = 8472 # UDP; the K3s server runs flannel with --flannel-backend=vxlan
  https_port         = 443
  http_port          = 80
}
