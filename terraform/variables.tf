variable "name" {
  description = "Prefix of every resource's name."
  type        = string
  default     = "soundstream"
}

variable "region" {
  description = "AWS region (the prod overlay's SecretProviderClasses and image name say the same)."
  type        = string
  default     = "us-east-1"
}

variable "availability_zones" {
  description = "The two zones, in the order of the subnet lists below."
  type        = list(string)
  default     = ["us-east-1a", "us-east-1b"]
}

variable "vpc_cidr" {
  description = "The VPC's address range."
  type        = string
  default     = "10.0.0.0/16"
}

variable "public_subnet_cidrs" {
  description = "One per zone: the ALB and the NAT gateway. The prod overlay lists these as SOUNDSTREAM_TRUSTED_PROXIES and as the API's only sources."
  type        = list(string)
  default     = ["10.0.0.0/24", "10.0.1.0/24"]
}

variable "private_subnet_cidrs" {
  description = "One per zone: the K3s nodes and RDS. The prod overlay's egress to PostgreSQL names these."
  type        = list(string)
  default     = ["10.0.10.0/24", "10.0.11.0/24"]
}

variable "allowed_ingress_cidrs" {
  description = "Who may reach the ALB."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "certificate_arn" {
  description = "ACM certificate for the HTTPS listener (issued for the API's host name)."
  type        = string
}

variable "alb_deletion_protection" {
  description = "Refuse to delete the ALB (turn off before `terraform destroy`)."
  type        = bool
  default     = true
}

variable "k3s_channel" {
  description = "K3s release channel (a minor version); tests/deploy validate the manifests against the same Kubernetes minor."
  type        = string
  default     = "v1.33"
}

variable "server_instance_type" {
  description = "The K3s server: control plane only (tainted), so a small burstable size."
  type        = string
  default     = "t3.medium"
}

variable "agent_instance_type" {
  description = "K3s agents run every workload; non-burstable, since extraction is sustained CPU."
  type        = string
  default     = "m6i.large"
}

variable "agent_min_size" {
  description = "At least three: each RabbitMQ node needs a machine of its own."
  type        = number
  default     = 3
}

variable "agent_max_size" {
  description = "Most agents."
  type        = number
  default     = 5
}

variable "agent_desired_capacity" {
  description = "Agents to start with."
  type        = number
  default     = 3
}

variable "ecr_credential_provider_version" {
  description = "Release of the kubelet ECR credential provider (cloud-provider-aws) the agents install."
  type        = string
  default     = "v1.31.0"
}

variable "chart_versions" {
  description = "Helm chart versions of the cluster add-ons the K3s server installs."
  type        = map(string)
  default = {
    secrets_store_csi_driver = "1.4.6"
    secrets_store_aws        = "0.3.9"
    keda                     = "2.15.1"
    aws_ebs_csi_driver       = "2.35.1"
  }
}

variable "db_instance_class" {
  description = "RDS instance class."
  type        = string
  default     = "db.t4g.medium"
}

variable "db_allocated_storage" {
  description = "RDS storage in GiB at creation (it grows by itself up to db_max_allocated_storage)."
  type        = number
  default     = 50
}

variable "db_max_allocated_storage" {
  description = "Ceiling of RDS storage autoscaling, GiB."
  type        = number
  default     = 200
}

variable "db_multi_az" {
  description = "A standby in the other zone (doubles the instance cost)."
  type        = bool
  default     = false
}

variable "db_backup_retention_days" {
  description = "Days of automated RDS backups."
  type        = number
  default     = 7
}

variable "db_deletion_protection" {
  description = "Refuse to delete the database (turn off before `terraform destroy`)."
  type        = bool
  default     = true
}
