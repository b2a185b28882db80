variable "name" {
  description = "Name prefix of every resource (lower case letters, digits and hyphens)."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.name))
    error_message = "name must be 3-32 characters: lower case letters, digits and hyphens."
  }
}

variable "tags" {
  description = "Tags added to every resource that supports them."
  type        = map(string)
  default     = {}
}

variable "vpc_id" {
  description = "VPC that holds the load balancer and the tasks."
  type        = string

  validation {
    condition     = can(regex("^vpc-[0-9a-f]{8,17}$", var.vpc_id))
    error_message = "vpc_id must look like vpc-0123456789abcdef0."
  }
}

variable "public_subnet_ids" {
  description = "Subnets of the internet-facing load balancer (at least two Availability Zones)."
  type        = list(string)

  validation {
    condition     = length(var.public_subnet_ids) >= 2 && alltrue([for s in var.public_subnet_ids : can(regex("^subnet-[0-9a-f]{8,17}$", s))])
    error_message = "Give at least two subnet ids (subnet-...)."
  }
}

variable "private_subnet_ids" {
  description = "Subnets of the Fargate tasks; they need a route to S3, ECR and CloudWatch Logs (NAT or VPC endpoints)."
  type        = list(string)

  validation {
    condition     = length(var.private_subnet_ids) >= 2 && alltrue([for s in var.private_subnet_ids : can(regex("^subnet-[0-9a-f]{8,17}$", s))])
    error_message = "Give at least two subnet ids (subnet-...)."
  }
}

variable "certificate_arn" {
  description = "ACM certificate of the HTTPS listener, in the load balancer's region."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:acm:[a-z0-9-]+:[0-9]{12}:certificate/.+$", var.certificate_arn))
    error_message = "certificate_arn must be an ACM certificate ARN."
  }
}

variable "domain_name" {
  description = "DNS name of the load balancer covered by certificate_arn (you point it at alb_dns_name); CloudFront connects to this name. Required when enable_cloudfront is true."
  type        = string
  default     = null

  validation {
    condition     = var.domain_name == null || can(regex("^([a-z0-9-]+\\.)+[a-z]{2,}$", var.domain_name))
    error_message = "domain_name must be a lower case DNS name."
  }
}

variable "ingress_cidr_blocks" {
  description = "Client networks allowed to reach the load balancer on ports 80 (redirect only) and 443."
  type        = list(string)
  default     = ["0.0.0.0/0"]

  validation {
    condition     = length(var.ingress_cidr_blocks) > 0 && alltrue([for c in var.ingress_cidr_blocks : can(cidrhost(c, 0))])
    error_message = "ingress_cidr_blocks must be a non-empty list of CIDR blocks."
  }
}

variable "bucket_name" {
  description = "Name of the private media bucket this module creates."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name)) && !can(regex("\\.\\.", var.bucket_name))
    error_message = "bucket_name must be a valid S3 bucket name."
  }
}

variable "s3_prefix" {
  description = "Key prefix the proxy serves (PROXY_S3_PREFIX); the task may read only below it. Empty serves the whole bucket."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^([A-Za-z0-9!_.()'-]+/)*$", var.s3_prefix))
    error_message = "s3_prefix must be empty or path segments each ending with a slash, e.g. media/."
  }
}

variable "media_mount" {
  description = "With extra_mounts: the mount the media bucket is served at, /objects/<media_mount>/<key>."
  type        = string
  default     = "media"

  validation {
    condition     = can(regex("^[A-Za-z0-9_~-][A-Za-z0-9_.~-]*$", var.media_mount))
    error_message = "media_mount must be one path segment of letters, digits, _, -, . and ~."
  }
}

variable "extra_mounts" {
  description = "More buckets the proxy serves (PROXY_MOUNTS): mount name -> bucket_name and s3_prefix (empty or segments ending in /), each at /objects/<name>/<key>, private, KMS-encrypted, versioned and TLS-only like the media bucket, read by the task only below its prefix. Empty: the media bucket alone, at /objects/<key>."
  type = map(object({
    bucket_name = string
    s3_prefix   = optional(string, "")
  }))
  default = {}

  validation {
    condition = alltrue([
      for name, mount in var.extra_mounts :
      can(regex("^[A-Za-z0-9_~-][A-Za-z0-9_.~-]*$", name)) && can(regex("^([A-Za-z0-9!_.()'-]+/)*$", mount.s3_prefix))
    ])
    error_message = "extra_mounts: each name one path segment of letters, digits, _, -, . and ~; each s3_prefix empty or segments ending with a slash."
  }
}

variable "enable_writes" {
  description = "Accept PUT and DELETE of objects (PROXY_WRITES) from API keys with \"access\": \"write\" and URLs signed for the method: the task role may then also put and delete objects and abort multipart uploads below each mount's prefix, and parts are spooled on the task's ephemeral storage. CloudFront passes only GET and HEAD: writes go to domain_name."
  type        = bool
  default     = false
}

variable "s3_client" {
  description = "S3 client of the proxy (PROXY_S3_CLIENT): aiobotocore (async) or boto3 (threads)."
  type        = string
  default     = "aiobotocore"

  validation {
    condition     = contains(["aiobotocore", "boto3"], var.s3_client)
    error_message = "s3_client must be aiobotocore or boto3."
  }
}

variable "image_tag" {
  description = "Tag of the proxy image in the module's ECR repository (tags are immutable: use a release or a commit id)."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.image_tag)) && var.image_tag != "latest"
    error_message = "image_tag must be a valid Docker tag other than latest."
  }
}

variable "container_port" {
  description = "Port the proxy listens on inside the task (PROXY_PORT)."
  type        = number
  default     = 8000

  validation {
    condition     = var.container_port >= 1024 && var.container_port <= 65535
    error_message = "container_port must be an unprivileged port (1024-65535)."
  }
}

variable "task_cpu" {
  description = "Fargate task CPU units."
  type        = number
  default     = 512

  validation {
    condition     = contains([256, 512, 1024, 2048, 4096, 8192, 16384], var.task_cpu)
    error_message = "task_cpu must be a Fargate CPU size (256-16384)."
  }
}

variable "task_memory" {
  description = "Fargate task memory in MiB (must fit task_cpu)."
  type        = number
  default     = 1024

  validation {
    condition     = var.task_memory >= 512 && var.task_memory <= 122880
    error_message = "task_memory must be between 512 and 122880 MiB."
  }
}

variable "workers" {
  description = "uvicorn worker processes per task (PROXY_WORKERS)."
  type        = number
  default     = 1

  validation {
    condition     = var.workers >= 1 && var.workers <= 64
    error_message = "workers must be between 1 and 64."
  }
}

variable "extra_environment" {
  description = "More PROXY_* settings for the container, e.g. { PROXY_CHUNK_SIZE = \"262144\" }."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k in keys(var.extra_environment) : can(regex("^PROXY_[A-Z0-9_]+$", k)) && !contains(["PROXY_API_KEYS", "PROXY_SIGNING_KEYS"], k)])
    error_message = "extra_environment keys must be PROXY_* variable names other than PROXY_API_KEYS and PROXY_SIGNING_KEYS (those come from Secrets Manager)."
  }
}

# Access control. The keys never pass through terraform: the task's execution role reads them from
# Secrets Manager when a task starts, and ECS hands them to the container as environment variables.
# Signing keys are required, so the proxy the module deploys always checks access; API keys are
# optional (browsers and players only need signed URLs).

variable "signing_keys_secret_arn" {
  description = "Complete ARN (with the 6-character suffix Secrets Manager adds) of the secret whose value is PROXY_SIGNING_KEYS: a JSON object of key id to HMAC secret."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:[A-Za-z0-9/_+=.@-]+-[A-Za-z0-9]{6}$", var.signing_keys_secret_arn))
    error_message = "signing_keys_secret_arn must be the complete ARN of a Secrets Manager secret (arn:aws:secretsmanager:<region>:<account>:secret:<name>-<suffix>)."
  }
}

variable "api_keys_secret_arn" {
  description = "Optional complete ARN of the secret whose value is PROXY_API_KEYS: a JSON list of objects with name, sha256 (of the bearer token) and an optional prefix. Null: no bearer keys, signed URLs only."
  type        = string
  default     = null

  validation {
    condition     = var.api_keys_secret_arn == null || can(regex("^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:[A-Za-z0-9/_+=.@-]+-[A-Za-z0-9]{6}$", var.api_keys_secret_arn))
    error_message = "api_keys_secret_arn must be null or the complete ARN of a Secrets Manager secret (arn:aws:secretsmanager:<region>:<account>:secret:<name>-<suffix>)."
  }
}

variable "signing_key_id" {
  description = "Key id of the signing secret that `python -m proxy sign` uses (PROXY_SIGNING_KEY_ID); not a secret. Null: the last key of the signing secret."
  type        = string
  default     = null

  validation {
    condition     = var.signing_key_id == null || can(regex("^[A-Za-z0-9_.-]{1,64}$", var.signing_key_id))
    error_message = "signing_key_id must be 1-64 letters, digits, dots, hyphens or underscores."
  }
}

variable "secrets_kms_key_arn" {
  description = "Customer managed KMS key that encrypts the two secrets, if any; the execution role may then decrypt with it through Secrets Manager. Null: the secrets use the AWS managed key aws/secretsmanager."
  type        = string
  default     = null

  validation {
    condition     = var.secrets_kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[0-9a-fA-F-]+$", var.secrets_kms_key_arn))
    error_message = "secrets_kms_key_arn must be null or a KMS key ARN (arn:aws:kms:<region>:<account>:key/<id>), not an alias."
  }
}

variable "desired_count" {
  description = "Tasks started before autoscaling takes over."
  type        = number
  default     = 2

  validation {
    condition     = var.desired_count >= 1
    error_message = "desired_count must be at least 1."
  }
}

variable "min_capacity" {
  description = "Fewest tasks autoscaling keeps."
  type        = number
  default     = 2

  validation {
    condition     = var.min_capacity >= 1
    error_message = "min_capacity must be at least 1."
  }
}

variable "max_capacity" {
  description = "Most tasks autoscaling starts."
  type        = number
  default     = 10

  validation {
    condition     = var.max_capacity >= 1 && var.max_capacity <= 1000
    error_message = "max_capacity must be between 1 and 1000."
  }
}

variable "cpu_target_percent" {
  description = "Average service CPU utilisation that target tracking aims for."
  type        = number
  default     = 60

  validation {
    condition     = var.cpu_target_percent >= 10 && var.cpu_target_percent <= 90
    error_message = "cpu_target_percent must be between 10 and 90."
  }
}

variable "requests_per_target" {
  description = "ALB requests per task per minute that target tracking aims for."
  type        = number
  default     = 1000

  validation {
    condition     = var.requests_per_target >= 1
    error_message = "requests_per_target must be positive."
  }
}

variable "alb_idle_timeout" {
  description = "Seconds a connection may stay idle on the load balancer; long for slow media downloads."
  type        = number
  default     = 900

  validation {
    condition     = var.alb_idle_timeout >= 600 && var.alb_idle_timeout <= 4000
    error_message = "alb_idle_timeout must be between 600 and 4000 seconds."
  }
}

variable "deletion_protection" {
  description = "Protect the load balancer from deletion."
  type        = bool
  default     = true
}

variable "log_retention_days" {
  description = "Days CloudWatch keeps the proxy's logs."
  type        = number
  default     = 365

  validation {
    condition     = contains([365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a CloudWatch retention value of at least 365."
  }
}

variable "access_log_expiration_days" {
  description = "Days the access-log bucket keeps load balancer and S3 access logs."
  type        = number
  default     = 365

  validation {
    condition     = var.access_log_expiration_days >= 90
    error_message = "access_log_expiration_days must be at least 90."
  }
}

variable "noncurrent_version_expiration_days" {
  description = "Days old object versions stay in the versioned buckets."
  type        = number
  default     = 90

  validation {
    condition     = var.noncurrent_version_expiration_days >= 1
    error_message = "noncurrent_version_expiration_days must be at least 1."
  }
}

variable "alb_web_acl_arn" {
  description = "Optional regional WAFv2 web ACL associated with the load balancer."
  type        = string
  default     = null

  validation {
    condition     = var.alb_web_acl_arn == null || can(regex("^arn:aws[a-z-]*:wafv2:[a-z0-9-]+:[0-9]{12}:regional/webacl/.+$", var.alb_web_acl_arn))
    error_message = "alb_web_acl_arn must be a regional WAFv2 web ACL ARN."
  }
}

variable "enable_cloudfront" {
  description = "Put a CloudFront distribution in front of the load balancer that caches each byte range separately."
  type        = bool
  default     = false
}

variable "cloudfront_aliases" {
  description = "Viewer host names of the CloudFront distribution (covered by cloudfront_certificate_arn)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for a in var.cloudfront_aliases : can(regex("^([a-z0-9-]+\\.)+[a-z]{2,}$", a))])
    error_message = "cloudfront_aliases must be lower case DNS names."
  }
}

variable "cloudfront_certificate_arn" {
  description = "ACM certificate in us-east-1 for cloudfront_aliases. Required when enable_cloudfront is true."
  type        = string
  default     = null

  validation {
    condition     = var.cloudfront_certificate_arn == null || can(regex("^arn:aws[a-z-]*:acm:us-east-1:[0-9]{12}:certificate/.+$", var.cloudfront_certificate_arn))
    error_message = "cloudfront_certificate_arn must be an ACM certificate ARN in us-east-1."
  }
}

variable "cloudfront_web_acl_arn" {
  description = "Optional global (CLOUDFRONT scope) WAFv2 web ACL ARN for the distribution."
  type        = string
  default     = null

  validation {
    condition     = var.cloudfront_web_acl_arn == null || can(regex("^arn:aws[a-z-]*:wafv2:us-east-1:[0-9]{12}:global/webacl/.+$", var.cloudfront_web_acl_arn))
    error_message = "cloudfront_web_acl_arn must be a global WAFv2 web ACL ARN."
  }
}

variable "cloudfront_price_class" {
  description = "CloudFront price class."
  type        = string
  default     = "PriceClass_100"

  validation {
    condition     = contains(["PriceClass_All", "PriceClass_200", "PriceClass_100"], var.cloudfront_price_class)
    error_message = "cloudfront_price_class must be PriceClass_All, PriceClass_200 or PriceClass_100."
  }
}

variable "cloudfront_default_ttl" {
  description = "Seconds CloudFront caches a response that sends no Cache-Control max-age (the proxy sends no-cache by default)."
  type        = number
  default     = 0

  validation {
    condition     = var.cloudfront_default_ttl >= 0 && var.cloudfront_default_ttl <= 31536000
    error_message = "cloudfront_default_ttl must be between 0 and 31536000."
  }
}
