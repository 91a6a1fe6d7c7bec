# The soundstream image. Tags are immutable, so a tag names one image for good
# (the manifests pin a tag, not a digest, and pull it IfNotPresent).
resource "aws_ecr_repository" "soundstream" {
  name                 = "soundstream"
  image_tag_mutability = "IMMUTABLE"

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "KMS"
    kms_key         = aws_kms_key.main.arn
  }
}

resource "aws_ecr_lifecycle_policy" "soundstream" {
  repository = aws_ecr_repository.soundstream.name
  policy = jsonencode({
    rules = [{
      rulePriority = 1
      description  = "Keep the 30 newest images"
      selection = {
        tagStatus   = "any"
        countType   = "imageCountMoreThan"
        countNumber = 30
      }
      action = { type = "expire" }
    }]
  })
}
