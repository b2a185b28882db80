variable "region" {
  description = "AWS region of the deployment."
  type        = string
  default     = "eu-west-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]$", var.region))
    error_message = "region must be an AWS region name such as eu-west-1."
  }
}

variable "name" {
  description = "Name prefix of every resource."
  type        = string
  default     = "media-proxy"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.name))
    error_message = "name must be 3-32 characters: lower case letters, digits and hyphens."
  }
}

variable "vpc_id" {
  description = "Existing VPC."
  type        = string

  validation {
    condition     = can(regex("^vpc-[0-9a-f]{8,17}$", var.vpc_id))
    error_message = "vpc_id must look like vpc-0123456789abcdef0."
  }
}

variable "public_subnet_ids" {
  description = "Public subnets for the load balancer."
  type        = list(string)

  validation {
    condition     = length(var.public_subnet_ids) >= 2
    error_message = "Give at least two public subnets."
  }
}

variable "private_subnet_ids" {
  description = "Private subnets (with NAT or VPC endpoints) for the tasks."
  type        = list(string)

  validation {
    condition     = length(var.private_subnet_ids) >= 2
    error_message = "Give at least two private subnets."
  }
}

variable "certificate_arn" {
  description = "ACM certificate for domain_name in var.region."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:acm:", var.certificate_arn))
    error_message = "certificate_arn must be an ACM certificate ARN."
  }
}

variable "domain_name" {
  description = "Host name of the load balancer (an alias record to alb_dns_name), covered by certificate_arn."
  type        = string

  validation {
    condition     = can(regex("^([a-z0-9-]+\\.)+[a-z]{2,}$", var.domain_name))
    error_message = "domain_name must be a lower case DNS name."
  }
}

variable "bucket_name" {
  description = "Name of the media bucket to create."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "bucket_name must be a valid S3 bucket name."
  }
}

variable "image_tag" {
  description = "Immutable tag of the proxy image pushed to the module's ECR repository."
  type        = string

  validation {
    condition     = var.image_tag != "latest" && length(var.image_tag) > 0
    error_message = "image_tag must be a release or commit tag, not latest."
  }
}

variable "enable_cloudfront" {
  description = "Serve through CloudFront (each byte range cached separately)."
  type        = bool
  default     = true
}

variable "cloudfront_aliases" {
  description = "Viewer host names of the CloudFront distribution."
  type        = list(string)
  default     = []
}

variable "cloudfront_certificate_arn" {
  description = "ACM certificate in us-east-1 for cloudfront_aliases."
  type        = string
  default     = null
}

variable "signing_keys_secret_arn" {
  description = "Secrets Manager secret holding PROXY_SIGNING_KEYS, a JSON object of key id to HMAC secret (complete ARN)."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:secretsmanager:", var.signing_keys_secret_arn))
    error_message = "signing_keys_secret_arn must be a Secrets Manager secret ARN."
  }
}

variable "api_keys_secret_arn" {
  description = "Secrets Manager secret holding PROXY_API_KEYS, a JSON list of name, sha256 and prefix objects (complete ARN); null for signed URLs only."
  type        = string
  default     = null

  validation {
    condition     = var.api_keys_secret_arn == null || can(regex("^arn:aws[a-z-]*:secretsmanager:", var.api_keys_secret_arn))
    error_message = "api_keys_secret_arn must be null or a Secrets Manager secret ARN."
  }
}

variable "signing_key_id" {
  description = "Key id in the signing secret that new signed URLs use (PROXY_SIGNING_KEY_ID)."
  type        = string
  default     = null
}

variable "secrets_kms_key_arn" {
  description = "Customer managed KMS key of the two secrets, or null for the AWS managed key."
  type        = string
  default     = null
}
