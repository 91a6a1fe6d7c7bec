# Every credential is generated here and kept in Secrets Manager, encrypted
# with the project's key. Pods read theirs as files through the Secrets Store
# CSI driver (the prod overlay's SecretProviderClasses name these secrets);
# the nodes read only the K3s join token.

resource "random_password" "amqp_ingest" {
  length  = 32
  special = false
}

resource "random_password" "rabbitmq_admin" {
  length  = 32
  special = false
}

resource "random_password" "rabbitmq_keda" {
  length  = 32
  special = false
}

resource "random_password" "erlang_cookie" {
  length  = 48
  special = false
}

resource "random_password" "cursor_key" {
  length  = 48
  special = false
}

resource "random_password" "api_key" {
  length  = 40
  special = false
}

resource "random_password" "k3s_token" {
  length  = 48
  special = false
}

locals {
  rabbitmq_host = "rabbitmq.soundstream.svc.cluster.local"

  # The broker's users (RabbitMQ definitions): the ingest role may configure,
  # write and read only soundstream.* names; KEDA only monitors.
  rabbitmq_definitions = jsonencode({
    vhosts = [{ name = "/" }]
    users = [
      { name = "admin", password = random_password.rabbitmq_admin.result, tags = ["administrator"] },
      { name = "soundstream-ingest", password = random_password.amqp_ingest.result, tags = [] },
      { name = "keda", password = random_password.rabbitmq_keda.result, tags = ["monitoring"] },
    ]
    permissions = [
      { user = "admin", vhost = "/", configure = ".*", write = ".*", read = ".*" },
      { user = "soundstream-ingest", vhost = "/", configure = "^soundstream\\.", write = "^soundstream\\.", read = "^soundstream\\." },
      { user = "keda", vhost = "/", configure = "^$", write = "^$", read = "^$" },
    ]
  })

  # Their names apart from their values: for_each takes no sensitive value, and
  # a name derived from the (sensitive) map would be one.
  secret_names = toset(["database-url", "amqp-url", "cursor-key", "rabbitmq"])

  # Secret name (after "<name>/") => value. api-keys is apart: operators edit it.
  secret_values = {
    "database-url" = "postgresql://${aws_db_instance.main.username}:${random_password.db.result}@${aws_db_instance.main.address}:${aws_db_instance.main.port}/${aws_db_instance.main.db_name}?sslmode=require"
    "amqp-url"     = "amqp://soundstream-ingest:${random_password.amqp_ingest.result}@${local.rabbitmq_host}:5672/"
    "cursor-key"   = random_password.cursor_key.result
    "rabbitmq" = jsonencode({
      definitions   = local.rabbitmq_definitions
      erlang_cookie = random_password.erlang_cookie.result
      keda_host     = "http://keda:${random_password.rabbitmq_keda.result}@${local.rabbitmq_host}:15672"
    })
  }
}

resource "aws_secretsmanager_secret" "app" {
  #checkov:skip=CKV2_AWS_57:Each value is shared with its other end (a RabbitMQ user, RDS); rotate by replacing its random_password and applying, which updates both
  for_each = local.secret_names

  name                    = "${var.name}/${each.key}"
  kms_key_id              = aws_kms_key.main.arn
  recovery_window_in_days = 7
}

resource "aws_secretsmanager_secret_version" "app" {
  for_each = aws_secretsmanager_secret.app

  secret_id     = each.value.id
  secret_string = local.secret_values[each.key]
}

# The API's bearer keys, comma-separated: one generated key to start with;
# add or rotate keys in Secrets Manager, terraform leaves the value alone after.
resource "aws_secretsmanager_secret" "api_keys" {
  #checkov:skip=CKV2_AWS_57:Keys are handed to clients; operators rotate them by editing the list (old and new side by side)
  name                    = "${var.name}/api-keys"
  kms_key_id              = aws_kms_key.main.arn
  recovery_window_in_days = 7
}

resource "aws_secretsmanager_secret_version" "api_keys" {
  secret_id     = aws_secretsmanager_secret.api_keys.id
  secret_string = random_password.api_key.result

  lifecycle {
    ignore_changes = [secret_string]
  }
}

resource "aws_secretsmanager_secret" "k3s_token" {
  #checkov:skip=CKV2_AWS_57:The K3s join token is read once when a node joins; rotating it means rotating the cluster's (k3s token rotate)
  name                    = "${var.name}/k3s-token"
  kms_key_id              = aws_kms_key.main.arn
  recovery_window_in_days = 7
}

resource "aws_secretsmanager_secret_version" "k3s_token" {
  secret_id     = aws_secretsmanager_secret.k3s_token.id
  secret_string = random_password.k3s_token.result
}
