# Example: the proxy in an existing VPC, with CloudFront in front and access control on.
# Create the two secrets first (their values never pass through terraform), e.g.
#   aws secretsmanager create-secret --name media-proxy/signing-keys \
#     --secret-string '{"2025-01":"<random HMAC secret>"}'
#   aws secretsmanager create-secret --name media-proxy/api-keys \
#     --secret-string '[{"name":"ci","sha256":"<printf %s TOKEN | python -m proxy hash-key>"}]'
# and put their complete ARNs into example.tfvars, then
#   terraform init && terraform apply -var-file=example.tfvars
# then push the image: docker build -t <ecr_repository_url>:<image_tag> . && docker push ...

provider "aws" {
  region = var.region

  default_tags {
    tags = {
      Project   = "media-object-proxy"
      ManagedBy = "terraform"
    }
  }
}

module "media_proxy" {
  source = "../../modules/media-proxy"

  name               = var.name
  vpc_id             = var.vpc_id
  public_subnet_ids  = var.public_subnet_ids
  private_subnet_ids = var.private_subnet_ids
  certificate_arn    = var.certificate_arn
  domain_name        = var.domain_name

  bucket_name = var.bucket_name
  s3_prefix   = "media/"
  s3_client   = "aiobotocore"
  image_tag   = var.image_tag

  # Two buckets, two mounts: /objects/videos/<key> (the media bucket, below media/) and
  # /objects/builds/<key> (a second bucket, whole).
  media_mount = "videos"
  extra_mounts = {
    builds = { bucket_name = "${var.bucket_name}-builds" }
  }

  task_cpu      = 1024
  task_memory   = 2048
  workers       = 2
  desired_count = 2
  min_capacity  = 2
  max_capacity  = 20

  # Access control: the keys come from Secrets Manager, read by the execution role.
  signing_keys_secret_arn = var.signing_keys_secret_arn
  api_keys_secret_arn     = var.api_keys_secret_arn
  signing_key_id          = var.signing_key_id
  secrets_kms_key_arn     = var.secrets_kms_key_arn

  enable_cloudfront          = var.enable_cloudfront
  cloudfront_aliases         = var.cloudfront_aliases
  cloudfront_certificate_arn = var.cloudfront_certificate_arn

  tags = { Environment = "example" }
}
