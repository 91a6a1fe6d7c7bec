# State lives in S3 (encrypted, with S3's own locking); the bucket is created
# once, outside this configuration. Copy backend.hcl.example to backend.hcl,
# fill it in, and run `terraform init -backend-config=backend.hcl`.
terraform {
  backend "s3" {}
}
