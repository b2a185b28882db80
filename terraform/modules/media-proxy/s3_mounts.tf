# More buckets served by the same proxy as mounts (var.extra_mounts -> PROXY_MOUNTS), each
# hardened like the media bucket: private, SSE-KMS with the module's key, versioned, TLS only,
# logged. The task reads each one only below its prefix (iam.tf).

resource "aws_s3_bucket" "mounts" {
  #checkov:skip=CKV_AWS_144:Cross-region replication is a disaster-recovery choice of the caller; the bucket is versioned.
  #checkov:skip=CKV2_AWS_62:Nothing consumes object events; the proxy only reads.
  for_each = var.extra_mounts

  bucket = each.value.bucket_name
  tags   = var.tags
}

resource "aws_s3_bucket_public_access_block" "mounts" {
  for_each = var.extra_mounts

  bucket                  = aws_s3_bucket.mounts[each.key].id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "mounts" {
  for_each = var.extra_mounts

  bucket = aws_s3_bucket.mounts[each.key].id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "mounts" {
  for_each = var.extra_mounts

  bucket = aws_s3_bucket.mounts[each.key].id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.this.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_versioning" "mounts" {
  for_each = var.extra_mounts

  bucket = aws_s3_bucket.mounts[each.key].id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "mounts" {
  for_each = var.extra_mounts

  bucket = aws_s3_bucket.mounts[each.key].id

  rule {
    id     = "old-versions-and-uploads"
    status = "Enabled"

    filter {}

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_expiration_days
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
}

resource "aws_s3_bucket_logging" "mounts" {
  for_each = var.extra_mounts

  bucket        = aws_s3_bucket.mounts[each.key].id
  target_bucket = aws_s3_bucket.logs.id
  target_prefix = "s3/${each.value.bucket_name}/"
}

data "aws_iam_policy_document" "mounts" {
  for_each = var.extra_mounts

  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.mounts[each.key].arn, "${aws_s3_bucket.mounts[each.key].arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "mounts" {
  for_each = var.extra_mounts

  bucket = aws_s3_bucket.mounts[each.key].id
  policy = data.aws_iam_policy_document.mounts[each.key].json

  depends_on = [aws_s3_bucket_public_access_block.mounts]
}
