# Placeholder values: replace every id with your own before `terraform apply`.
vpc_id                     = "vpc-0123456789abcdef0"
public_subnet_ids          = ["subnet-0aaaaaaaaaaaaaaa1", "subnet-0aaaaaaaaaaaaaaa2"]
private_subnet_ids         = ["subnet-0bbbbbbbbbbbbbbb1", "subnet-0bbbbbbbbbbbbbbb2"]
certificate_arn            = "arn:aws:acm:eu-west-1:123456789012:certificate/00000000-0000-0000-0000-000000000000"
domain_name                = "media-origin.example.com"
bucket_name                = "example-media-proxy-objects"
image_tag                  = "0.1.0"
cloudfront_aliases         = ["media.example.com"]
cloudfront_certificate_arn = "arn:aws:acm:us-east-1:123456789012:certificate/00000000-0000-0000-0000-000000000001"
# Access control: secrets created beforehand (see main.tf); the values here are placeholders.
signing_keys_secret_arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:media-proxy/signing-keys-AbCdEf"
api_keys_secret_arn     = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:media-proxy/api-keys-GhIjKl"
signing_key_id          = "2025-01"
