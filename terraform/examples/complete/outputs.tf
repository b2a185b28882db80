output "alb_dns_name" {
  description = "Point domain_name here."
  value       = module.media_proxy.alb_dns_name
}

output "ecr_repository_url" {
  description = "Push the image here."
  value       = module.media_proxy.ecr_repository_url
}

output "bucket_name" {
  description = "Upload media below media/ in this bucket."
  value       = module.media_proxy.bucket_name
}

output "cloudfront_domain_name" {
  description = "Point cloudfront_aliases here."
  value       = module.media_proxy.cloudfront_domain_name
}
