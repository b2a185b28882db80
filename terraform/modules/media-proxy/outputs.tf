output "alb_dns_name" {
  description = "DNS name of the load balancer; point domain_name at it (alias record)."
  value       = aws_lb.this.dns_name
}

output "alb_zone_id" {
  description = "Route 53 zone id of the load balancer, for alias records."
  value       = aws_lb.this.zone_id
}

output "bucket_name" {
  description = "The private media bucket; upload objects below s3_prefix with their Content-Type."
  value       = aws_s3_bucket.media.id
}

output "mount_bucket_names" {
  description = "The extra mounts' buckets by mount name (upload below each one's s3_prefix)."
  value       = { for name, bucket in aws_s3_bucket.mounts : name => bucket.id }
}

output "bucket_arn" {
  description = "ARN of the media bucket."
  value       = aws_s3_bucket.media.arn
}

output "log_bucket_name" {
  description = "Bucket of the load balancer and S3 access logs."
  value       = aws_s3_bucket.logs.id
}

output "kms_key_arn" {
  description = "Key encrypting the bucket, the repository and the logs; uploaders need kms:GenerateDataKey on it."
  value       = aws_kms_key.this.arn
}

output "ecr_repository_url" {
  description = "Push the proxy image here, tagged with image_tag."
  value       = aws_ecr_repository.proxy.repository_url
}

output "cluster_name" {
  description = "ECS cluster name."
  value       = aws_ecs_cluster.this.name
}

output "service_name" {
  description = "ECS service name."
  value       = aws_ecs_service.proxy.name
}

output "task_role_arn" {
  description = "Role of the proxy tasks (read-only on the prefix)."
  value       = aws_iam_role.task.arn
}

output "log_group_name" {
  description = "CloudWatch log group of the proxy."
  value       = aws_cloudwatch_log_group.proxy.name
}

output "cloudfront_domain_name" {
  description = "CloudFront domain name, or null without CloudFront."
  value       = one(aws_cloudfront_distribution.this[*].domain_name)
}
