output "alb_dns_name" {
  description = "Point the API's host name (the certificate's) here."
  value       = aws_lb.api.dns_name
}

output "ecr_repository_url" {
  description = "The prod overlay's image name (images: newName)."
  value       = aws_ecr_repository.soundstream.repository_url
}

output "k3s_server_instance_id" {
  description = "For Session Manager: the kubeconfig is /etc/rancher/k3s/k3s.yaml on it."
  value       = aws_instance.server.id
}

output "rds_address" {
  description = "PostgreSQL's host name (the database-url secret holds the whole URL)."
  value       = aws_db_instance.main.address
}

output "pod_role_arns" {
  description = "The prod overlay's eks.amazonaws.com/role-arn annotations."
  value       = { for name, role in aws_iam_role.pod : name => role.arn }
}

output "oidc_issuer_url" {
  description = "The service-account issuer K3s signs pod tokens as."
  value       = local.oidc_issuer_url
}
