# The media object proxy on AWS: a private bucket, an ECR repository, ECS Fargate tasks behind an
# HTTPS load balancer with autoscaling, and optionally CloudFront caching each byte range.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.name

  # The proxy joins prefix and key with one slash, so "media/" serves media/<key>.
  object_prefix = var.s3_prefix
  object_arn    = "${aws_s3_bucket.media.arn}/${local.object_prefix}*"
  # Each extra mount's objects, below its prefix; with the media bucket's, where writes may land.
  mount_object_arns    = { for name, mount in var.extra_mounts : name => "${aws_s3_bucket.mounts[name].arn}/${mount.s3_prefix}*" }
  writable_object_arns = concat([local.object_arn], values(local.mount_object_arns))
  # Where upload parts are spooled (PROXY_UPLOAD_SPOOL_DIR): a task volume (the root is read-only).
  spool_path = "/home/proxy/spool"

  # With extra_mounts, every bucket is a mount (PROXY_MOUNTS): the media bucket at
  # /objects/<media_mount>/, each other at /objects/<its name>/.
  mounts = merge(
    {
      (var.media_mount) = {
        backend   = "s3"
        s3_bucket = aws_s3_bucket.media.id
        s3_prefix = var.s3_prefix
      }
    },
    {
      for name, mount in var.extra_mounts : name => {
        backend   = "s3"
        s3_bucket = aws_s3_bucket.mounts[name].id
        s3_prefix = mount.s3_prefix
      }
    },
  )

  container_name = "proxy"
  image          = "${aws_ecr_repository.proxy.repository_url}:${var.image_tag}"

  environment = merge(
    var.extra_environment,
    {
      PROXY_BACKEND   = "s3"
      PROXY_S3_BUCKET = aws_s3_bucket.media.id
      PROXY_S3_PREFIX = var.s3_prefix
      PROXY_S3_CLIENT = var.s3_client
      PROXY_S3_REGION = local.region
      PROXY_HOST      = "0.0.0.0"
      PROXY_PORT      = tostring(var.container_port)
      PROXY_WORKERS   = tostring(var.workers)
    },
    var.signing_key_id == null ? {} : { PROXY_SIGNING_KEY_ID = var.signing_key_id },
    length(var.extra_mounts) == 0 ? {} : { PROXY_MOUNTS = jsonencode(local.mounts) },
    var.enable_writes ? { PROXY_WRITES = "true", PROXY_UPLOAD_SPOOL_DIR = local.spool_path } : {},
  )

  # Access control: environment variable -> Secrets Manager ARN, read by the execution role.
  secrets = merge(
    { PROXY_SIGNING_KEYS = var.signing_keys_secret_arn },
    var.api_keys_secret_arn == null ? {} : { PROXY_API_KEYS = var.api_keys_secret_arn },
  )
}
