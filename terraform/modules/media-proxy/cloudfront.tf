# Optional CloudFront in front of the load balancer. Range is part of the cache key, so each
# byte range is cached as its own response and a 206 is never served for another range.

resource "aws_cloudfront_cache_policy" "ranges" {
  count       = var.enable_cloudfront ? 1 : 0
  name        = "${var.name}-ranges"
  comment     = "Cache key: path, Range and ?download"
  min_ttl     = 0
  default_ttl = var.cloudfront_default_ttl
  max_ttl     = 31536000

  parameters_in_cache_key_and_forwarded_to_origin {
    enable_accept_encoding_brotli = false # the proxy never sets a Content-Encoding
    enable_accept_encoding_gzip   = false

    headers_config {
      header_behavior = "whitelist"
      headers {
        items = ["Range"]
      }
    }

    cookies_config {
      cookie_behavior = "none"
    }

    query_strings_config {
      query_string_behavior = "whitelist"
      query_strings {
        items = ["download"]
      }
    }
  }
}

resource "aws_cloudfront_response_headers_policy" "security" {
  count   = var.enable_cloudfront ? 1 : 0
  name    = "${var.name}-security"
  comment = "Security headers on every response"

  security_headers_config {
    content_type_options {
      override = true
    }

    strict_transport_security {
      access_control_max_age_sec = 31536000
      include_subdomains         = true
      preload                    = true
      override                   = true
    }

    referrer_policy {
      referrer_policy = "no-referrer"
      override        = true
    }
  }
}

resource "aws_cloudfront_distribution" "this" {
  #checkov:skip=CKV_AWS_68:A WAF web ACL is the caller's choice: pass cloudfront_web_acl_arn.
  #checkov:skip=CKV_AWS_86:CloudFront standard logs need S3 ACLs, which the log bucket disables (BucketOwnerEnforced); the load balancer logs every request CloudFront forwards.
  #checkov:skip=CKV_AWS_305:Not a website: objects live under /objects/, there is no root document.
  #checkov:skip=CKV_AWS_310:There is one origin (the load balancer, itself spread over zones); no failover group.
  #checkov:skip=CKV2_AWS_47:The web ACL and its rules (e.g. AWSManagedRulesKnownBadInputsRuleSet) come from the caller.
  #checkov:skip=CKV_AWS_374:Media is served worldwide; geo restriction is the caller's policy.
  count           = var.enable_cloudfront ? 1 : 0
  enabled         = true
  is_ipv6_enabled = true
  comment         = "${var.name}: media object proxy"
  aliases         = var.cloudfront_aliases
  price_class     = var.cloudfront_price_class
  web_acl_id      = var.cloudfront_web_acl_arn
  http_version    = "http2and3"

  origin {
    origin_id   = "alb"
    domain_name = coalesce(var.domain_name, aws_lb.this.dns_name)

    custom_origin_config {
      http_port                = 80
      https_port               = 443
      origin_protocol_policy   = "https-only"
      origin_ssl_protocols     = ["TLSv1.2"]
      origin_read_timeout      = 60
      origin_keepalive_timeout = 60
    }
  }

  default_cache_behavior {
    target_origin_id           = "alb"
    viewer_protocol_policy     = "redirect-to-https"
    allowed_methods            = ["GET", "HEAD"]
    cached_methods             = ["GET", "HEAD"]
    compress                   = false
    cache_policy_id            = aws_cloudfront_cache_policy.ranges[0].id
    response_headers_policy_id = aws_cloudfront_response_headers_policy.security[0].id
  }

  restrictions {
    geo_restriction {
      restriction_type = "none"
    }
  }

  viewer_certificate {
    acm_certificate_arn      = var.cloudfront_certificate_arn
    ssl_support_method       = "sni-only"
    minimum_protocol_version = "TLSv1.2_2021"
  }

  lifecycle {
    precondition {
      condition     = var.domain_name != null && var.cloudfront_certificate_arn != null && length(var.cloudfront_aliases) > 0
      error_message = "enable_cloudfront needs domain_name, cloudfront_certificate_arn and cloudfront_aliases."
    }
  }

  tags = var.tags
}
