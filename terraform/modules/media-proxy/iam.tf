# Two roles. The execution role pulls the image and writes logs through the AWS managed policy
# (ecr:GetAuthorizationToken only exists on "*", so no policy of ours names "*"), and reads the
# access-control secrets (exactly those ARNs) when a task starts. The task role may only read
# objects below the prefix and list that prefix (with enable_writes, also put and delete there).

data "aws_iam_policy_document" "ecs_assume" {
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }

    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:${local.partition}:ecs:${local.region}:${local.account_id}:*"]
    }
  }
}

resource "aws_iam_role" "execution" {
  name               = "${var.name}-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy_attachment" "execution" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

# The container's PROXY_SIGNING_KEYS / PROXY_API_KEYS: ECS fetches them with the execution role.
data "aws_iam_policy_document" "execution" {
  statement {
    sid       = "ReadTheSigningKeys"
    effect    = "Allow"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [var.signing_keys_secret_arn]
  }

  dynamic "statement" {
    for_each = var.api_keys_secret_arn == null ? [] : [var.api_keys_secret_arn]

    content {
      sid       = "ReadTheApiKeys"
      effect    = "Allow"
      actions   = ["secretsmanager:GetSecretValue"]
      resources = [var.api_keys_secret_arn]
    }
  }

  # Only with a customer managed key on the secrets, and only through Secrets Manager.
  dynamic "statement" {
    for_each = var.secrets_kms_key_arn == null ? [] : [var.secrets_kms_key_arn]

    content {
      sid       = "DecryptTheSecretsThroughSecretsManager"
      effect    = "Allow"
      actions   = ["kms:Decrypt"]
      resources = [var.secrets_kms_key_arn]

      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["secretsmanager.${local.region}.amazonaws.com"]
      }
    }
  }
}

resource "aws_iam_role_policy" "execution" {
  name   = "${var.name}-read-secrets"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution.json
}

resource "aws_iam_role" "task" {
  name               = "${var.name}-task"
  assume_role_policy = data.aws_iam_policy_document.ecs_assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "task" {
  statement {
    sid       = "ReadObjectsBelowThePrefix"
    effect    = "Allow"
    actions   = ["s3:GetObject"]
    resources = [local.object_arn]
  }

  # Listing lets a missing key answer 404 rather than 403; only below the prefix.
  statement {
    sid       = "ListThePrefix"
    effect    = "Allow"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.media.arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${local.object_prefix}*"]
    }
  }

  # Each extra mount's bucket, only below its prefix, as the media bucket.
  dynamic "statement" {
    for_each = var.extra_mounts

    content {
      sid       = "ReadObjectsBelowThePrefixOf${title(replace(statement.key, "/[^A-Za-z0-9]/", ""))}"
      effect    = "Allow"
      actions   = ["s3:GetObject"]
      resources = [local.mount_object_arns[statement.key]]
    }
  }

  dynamic "statement" {
    for_each = var.extra_mounts

    content {
      sid       = "ListThePrefixOf${title(replace(statement.key, "/[^A-Za-z0-9]/", ""))}"
      effect    = "Allow"
      actions   = ["s3:ListBucket"]
      resources = [aws_s3_bucket.mounts[statement.key].arn]

      condition {
        test     = "StringLike"
        variable = "s3:prefix"
        values   = ["${statement.value.s3_prefix}*"]
      }
    }
  }

  # With enable_writes: PUT (a PutObject, or a multipart upload, which s3:PutObject covers too)
  # and DELETE, below the same prefixes as reads. The proxy never lists parts (no ListParts).
  dynamic "statement" {
    for_each = var.enable_writes ? [local.writable_object_arns] : []

    content {
      sid       = "WriteObjectsBelowThePrefixes"
      effect    = "Allow"
      actions   = ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
      resources = statement.value
    }
  }

  # Reads decrypt; with enable_writes, S3 also asks the key for the new objects' data keys.
  statement {
    sid       = "DecryptObjectsThroughS3"
    effect    = "Allow"
    actions   = concat(["kms:Decrypt"], var.enable_writes ? ["kms:GenerateDataKey"] : [])
    resources = [aws_kms_key.this.arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${local.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "task" {
  name   = "${var.name}-read-media"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.task.json
}
