# HTTPS on the ALB, plain HTTP inside the VPC to the API's NodePort on the agents.
resource "aws_lb" "api" {
  #checkov:skip=CKV_AWS_91:The API logs every request itself; ALB access logs would need a log bucket of their own, add one when an audit asks for it
  #checkov:skip=CKV2_AWS_28:Every /v1 request needs a bearer key and is rate-limited per key by the service; a WAF (5 USD a month and up) is an option, not a need
  name                       = "${var.name}-api"
  internal                   = false
  load_balancer_type         = "application"
  security_groups            = [aws_security_group.alb.id]
  subnets                    = aws_subnet.public[*].id
  drop_invalid_header_fields = true
  enable_deletion_protection = var.alb_deletion_protection
}

resource "aws_lb_target_group" "api" {
  #checkov:skip=CKV_AWS_378:TLS ends at the ALB; from there to the NodePort the traffic stays inside the VPC's private subnets
  name                 = "${var.name}-api"
  target_type          = "instance"
  vpc_id               = aws_vpc.main.id
  protocol             = "HTTP"
  port                 = local.api_node_port
  deregistration_delay = 30

  # Through the NodePort to an API pod on that node (externalTrafficPolicy:
  # Local): a node without a ready API pod is not sent requests.
  health_check {
    protocol            = "HTTP"
    port                = "traffic-port"
    path                = "/readyz"
    matcher             = "200"
    interval            = 10
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }
}

resource "aws_lb_listener" "https" {
  load_balancer_arn = aws_lb.api.arn
  port              = local.https_port
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.api.arn
  }
}

resource "aws_lb_listener" "http" {
  load_balancer_arn = aws_lb.api.arn
  port              = local.http_port
  protocol          = "HTTP"

  default_action {
    type = "redirect"

    redirect {
      port        = tostring(local.https_port)
      protocol    = "HTTPS"
      status_code = "HTTP_301"
    }
  }
}

# /metrics is for Prometheus inside the cluster (it scrapes the pods directly),
# not for the internet: the ALB answers it itself.
resource "aws_lb_listener_rule" "no_metrics" {
  listener_arn = aws_lb_listener.https.arn
  priority     = 10

  action {
    type = "fixed-response"

    fixed_response {
      content_type = "text/plain"
      message_body = "not found"
      status_code  = "404"
    }
  }

  condition {
    path_pattern {
      values = ["/metrics", "/metrics/*"]
    }
  }
}
