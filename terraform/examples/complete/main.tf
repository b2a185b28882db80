# Example: the proxy in an existing VPC, with CloudFront in front.
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

  task_cpu      = 1024
  task_memory   = 2048
  workers       = 2
  desired_count = 2
  min_capacity  = 2
  max_capacity  = 20

  enable_cloudfront          = var.enable_cloudfront
  cloudfront_aliases         = var.cloudfront_aliases
  cloudfront_certificate_arn = var.cloudfront_certificate_arn

  tags = { Environment = "example" }
}
