"""terraform/: every file parses (python-hcl2) and the module keeps its security invariants.

``tests/deploy/checks.sh`` adds ``terraform fmt -check`` and checkov; these tests read the HCL.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.terraform import EXAMPLE, MODULE, TERRAFORM, Body, Config, load, load_dir, ref

TF_FILES = sorted(TERRAFORM.rglob("*.tf"))
WILDCARD_ACTION = re.compile(r"^(\*|[a-z0-9-]+:\*)$")
# A key policy's Resource "*" means "this key"; it is the only place "*" may be a resource.
KEY_POLICY = "kms"
# Access control: container variable -> the module variable naming its Secrets Manager secret.
SECRETS = {
    "PROXY_SIGNING_KEYS": "signing_keys_secret_arn",
    "PROXY_API_KEYS": "api_keys_secret_arn",
}


@pytest.fixture(scope="module")
def module() -> Config:
    return load_dir(MODULE)


@pytest.fixture(scope="module")
def example() -> Config:
    return load_dir(EXAMPLE)


def statements(document: Body) -> Iterator[Body]:
    """Every statement of a policy document, those of ``dynamic "statement"`` blocks included."""
    yield from document.get("statement", [])
    for block in document.get("dynamic", []):
        if "statement" in block:
            yield from block["statement"]["content"]


def actions_of(statement: Body) -> list[str]:
    """A statement's actions: its list, or the names quoted in the expression that makes it
    (``concat(["kms:Decrypt"], var.enable_writes ? [...] : [])``)."""
    actions = statement.get("actions", [])
    if isinstance(actions, str):
        return re.findall(r'"([^"]+)"', actions)
    return list(actions)


def dynamic_statements(document: Body) -> dict[str, Body]:
    """The ``dynamic "statement"`` blocks of a policy document by their statement's sid."""
    found = {}
    for block in document.get("dynamic", []):
        (content,) = block["statement"]["content"]
        found[content["sid"]] = block["statement"]
    return found


def arn_pattern(config: Config, variable: str) -> re.Pattern[str]:
    """The regex a variable's validation applies (RE2, which Python reads the same here)."""
    (validation,) = config.variables[variable]["validation"]
    match = re.search(r'regex\("([^"\\]+)", var\.' + variable + r"\)", validation["condition"])
    assert match, f"{variable}: no regex validation"
    return re.compile(match.group(1))


def var(name: str) -> str:
    return "${var." + name + "}"


# The buckets: the media one, the access logs', and the extra mounts' (one per entry of
# var.extra_mounts, for_each; issue 24), each hardened alike.
BUCKETS = {"media", "logs", "mounts"}


def bucket_of(body: Body) -> str:
    """The bucket resource a per-bucket resource points at: ``media`` for aws_s3_bucket.media,
    ``mounts`` for aws_s3_bucket.mounts[each.key]."""
    match = re.fullmatch(
        r"\$\{aws_s3_bucket\.([a-z_]+)(?:\[each\.key\])?\.(id|bucket)\}", body["bucket"]
    )
    assert match, body["bucket"]
    return match.group(1)


def per_bucket(config: Config, kind: str) -> dict[str, Body]:
    return {bucket_of(body): body for body in config.of_type(kind).values()}


def default_of(config: Config, expression: Any) -> Any:
    """A literal, or the default of the ``${var.x}`` it names."""
    if isinstance(expression, str) and (m := re.fullmatch(r"\$\{var\.([a-z0-9_]+)\}", expression)):
        return config.variables[m.group(1)]["default"]
    return expression


def test_there_are_a_module_and_an_example() -> None:
    assert (MODULE / "main.tf").is_file() and (EXAMPLE / "main.tf").is_file()
    assert len(TF_FILES) >= 12


@pytest.mark.parametrize("path", TF_FILES, ids=lambda p: str(p.relative_to(TERRAFORM)))
def test_every_file_parses(path: Path) -> None:
    assert load(path), f"{path} is empty"


def test_every_bucket_blocks_public_access(module: Config) -> None:
    buckets = set(module.of_type("aws_s3_bucket"))
    assert buckets == BUCKETS
    blocks = per_bucket(module, "aws_s3_bucket_public_access_block")
    assert set(blocks) == buckets
    for name, block in blocks.items():
        for flag in (
            "block_public_acls",
            "block_public_policy",
            "ignore_public_acls",
            "restrict_public_buckets",
        ):
            assert block[flag] is True, f"{name}.{flag}"
    for name, owner in per_bucket(module, "aws_s3_bucket_ownership_controls").items():
        assert owner["rule"][0]["object_ownership"] == "BucketOwnerEnforced", name


def test_every_bucket_is_encrypted_and_media_with_kms(module: Config) -> None:
    configs = per_bucket(module, "aws_s3_bucket_server_side_encryption_configuration")
    assert set(configs) == BUCKETS
    for name, sse in configs.items():
        default = sse["rule"][0]["apply_server_side_encryption_by_default"][0]
        assert default["sse_algorithm"] in {"aws:kms", "AES256"}, name
    for name in ("media", "mounts"):
        media = configs[name]["rule"][0]["apply_server_side_encryption_by_default"][0]
        assert media == {
            "sse_algorithm": "aws:kms",
            "kms_master_key_id": ref("aws_kms_key", "this", "arn"),
        }
    assert module.of_type("aws_kms_key")["this"]["enable_key_rotation"] is True


def test_every_bucket_is_versioned(module: Config) -> None:
    versioning = per_bucket(module, "aws_s3_bucket_versioning")
    assert set(versioning) == BUCKETS
    for name, body in versioning.items():
        assert body["versioning_configuration"][0]["status"] == "Enabled", name


def test_every_bucket_policy_denies_insecure_transport(module: Config) -> None:
    policies = per_bucket(module, "aws_s3_bucket_policy")
    assert set(policies) == BUCKETS
    for bucket, policy in policies.items():
        match = re.fullmatch(
            r"\$\{data\.aws_iam_policy_document\.([a-z_]+)(?:\[each\.key\])?\.json\}",
            policy["policy"],
        )
        assert match, f"{bucket}: the policy must come from a policy document"
        document = module.data[("aws_iam_policy_document", match.group(1))]
        deny = [
            s
            for s in statements(document)
            if s.get("effect") == "Deny"
            and {"test": "Bool", "variable": "aws:SecureTransport", "values": ["false"]}
            in s.get("condition", [])
        ]
        assert len(deny) == 1, f"{bucket}: no TLS-only statement"
        arn = ref("aws_s3_bucket", bucket + ("[each.key]" if bucket == "mounts" else ""), "arn")
        assert set(deny[0]["resources"]) == {arn, arn + "/*"}
        assert deny[0]["actions"] == ["s3:*"]
        assert deny[0]["principals"] == [{"type": "*", "identifiers": ["*"]}]


def test_no_wildcard_actions_or_resources_in_allow_statements(module: Config) -> None:
    documents = {name: body for (kind, name), body in module.data.items()}
    assert {"task", "execution", "ecs_assume", "media", "logs", KEY_POLICY} <= set(documents)
    for name, document in documents.items():
        for statement in statements(document):
            where = f"{name}/{statement.get('sid', '?')}"
            if statement.get("effect", "Allow") == "Deny":
                continue  # a broad Deny (TLS only) narrows access
            for action in actions_of(statement):
                assert not WILDCARD_ACTION.match(action), f"{where}: action {action}"
                assert "*" not in action, f"{where}: action pattern {action}"
            assert "not_actions" not in statement and "not_resources" not in statement, where
            for resource in statement.get("resources", []):
                if resource == "*":
                    assert name == KEY_POLICY, f"{where}: resource *"
            for principal in statement.get("principals", []):
                assert "*" not in principal["identifiers"], f"{where}: principal *"
    for kind in ("aws_iam_policy", "aws_iam_role_policy", "aws_iam_user_policy"):
        for body in module.of_type(kind).values():
            assert re.fullmatch(
                r"\$\{data\.aws_iam_policy_document\.[a-z_]+\.json\}", body["policy"]
            )


def test_task_role_reads_only_below_the_prefix(module: Config) -> None:
    assert module.locals["object_arn"] == "${aws_s3_bucket.media.arn}/${local.object_prefix}*"
    task = module.data[("aws_iam_policy_document", "task")]
    allowed = {a: s for s in task["statement"] for a in actions_of(s)}
    assert set(allowed) == {"s3:GetObject", "s3:ListBucket", "kms:Decrypt", "kms:GenerateDataKey"}
    decrypt = allowed["kms:Decrypt"]["actions"]  # GenerateDataKey: only with writes (below)
    assert decrypt == '${concat(["kms:Decrypt"], var.enable_writes ? ["kms:GenerateDataKey"] : [])}'
    assert allowed["s3:GetObject"]["resources"] == ["${local.object_arn}"]
    listing = allowed["s3:ListBucket"]
    assert listing["resources"] == [ref("aws_s3_bucket", "media", "arn")]
    assert listing["condition"] == [
        {"test": "StringLike", "variable": "s3:prefix", "values": ["${local.object_prefix}*"]}
    ]
    policy = module.of_type("aws_iam_role_policy")["task"]
    assert policy["role"] == ref("aws_iam_role", "task", "id")
    # Each extra mount's bucket likewise, only below its own prefix (issue 24).
    mounts = {
        action: block
        for block in dynamic_statements(task).values()
        for action in block["content"][0]["actions"]
        if block["for_each"] == "${var.extra_mounts}"
    }
    assert set(mounts) == {"s3:GetObject", "s3:ListBucket"}
    bucket = "${aws_s3_bucket.mounts[statement.key].arn}"
    assert module.locals["mount_object_arns"] == (
        '${{for name, mount in var.extra_mounts : name => "${aws_s3_bucket.mounts[name].arn}/'
        '${mount.s3_prefix}*"}}'
    )
    assert mounts["s3:GetObject"]["content"][0]["resources"] == [
        "${local.mount_object_arns[statement.key]}"
    ]
    listing = mounts["s3:ListBucket"]["content"][0]
    assert listing["resources"] == [bucket]
    assert listing["condition"] == [
        {"test": "StringLike", "variable": "s3:prefix", "values": ["${statement.value.s3_prefix}*"]}
    ]


def test_writes_are_opt_in_and_below_the_same_prefixes(module: Config) -> None:
    assert module.variables["enable_writes"]["type"] == "bool"
    assert module.variables["enable_writes"]["default"] is False
    task = module.data[("aws_iam_policy_document", "task")]
    writes = dynamic_statements(task)["WriteObjectsBelowThePrefixes"]
    assert writes["for_each"] == "${var.enable_writes ? [local.writable_object_arns] : []}"
    (content,) = writes["content"]
    assert content["actions"] == ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
    assert content["resources"] == "${statement.value}"
    assert module.locals["writable_object_arns"] == (
        "${concat([local.object_arn], values(local.mount_object_arns))}"
    )
    # The container: PROXY_WRITES, and the parts spooled on a task volume (a read-only root).
    guard = (
        'var.enable_writes ? {PROXY_WRITES = "true", PROXY_UPLOAD_SPOOL_DIR = local.spool_path}'
        " : {}"
    )
    assert guard in module.locals["environment"]
    definition = module.of_type("aws_ecs_task_definition")["proxy"]
    assert (
        'mountPoints = var.enable_writes ? [{sourceVolume = "spool", containerPath = '
        "local.spool_path, readOnly = false}] : []" in definition["container_definitions"]
    )
    (volume,) = definition["dynamic"]
    assert volume["volume"]["for_each"] == '${var.enable_writes ? ["spool"] : []}'
    assert volume["volume"]["content"] == [{"name": "${volume.value}"}]
    assert module.locals["spool_path"] == "/home/proxy/spool"
    # Fargate makes the volume the proxy user's only from the image's VOLUME at that path.
    assert 'VOLUME ["/home/proxy/spool"]' in (TERRAFORM.parent / "Dockerfile").read_text()


def test_extra_mounts_become_proxy_mounts(module: Config, example: Config) -> None:
    # PROXY_MOUNTS only with extra mounts: without, the media bucket alone at /objects/<key>.
    guard = "length(var.extra_mounts) == 0 ? {} : {PROXY_MOUNTS = jsonencode(local.mounts)}"
    assert guard in module.locals["environment"]
    mounts = module.locals["mounts"]
    assert '(var.media_mount) = {backend = "s3", s3_bucket = aws_s3_bucket.media.id' in mounts
    assert "s3_bucket = aws_s3_bucket.mounts[name].id, s3_prefix = mount.s3_prefix" in mounts
    assert module.variables["extra_mounts"]["default"] == {}
    # The example shows two buckets as two mounts.
    call = example.modules["media_proxy"]
    assert call["media_mount"] == "videos"
    assert set(call["extra_mounts"]) == {"builds"}


def test_execution_role_uses_the_managed_policy(module: Config) -> None:
    attachments = module.of_type("aws_iam_role_policy_attachment")
    assert [a["role"] for a in attachments.values()] == [ref("aws_iam_role", "execution", "name")]
    arn = attachments["execution"]["policy_arn"]
    assert arn.endswith(":iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy")
    definition = module.of_type("aws_ecs_task_definition")["proxy"]
    assert definition["execution_role_arn"] != definition["task_role_arn"]


def test_execution_role_reads_exactly_the_access_control_secrets(module: Config) -> None:
    policy = module.of_type("aws_iam_role_policy")["execution"]
    assert policy["role"] == ref("aws_iam_role", "execution", "id")
    assert policy["policy"] == "${data.aws_iam_policy_document.execution.json}"
    document = module.data[("aws_iam_policy_document", "execution")]
    found = list(statements(document))
    assert all(s.get("effect") == "Allow" for s in found)
    reads = [s for s in found if any(a.startswith("secretsmanager:") for a in s["actions"])]
    for statement in reads:
        assert statement["actions"] == ["secretsmanager:GetSecretValue"], statement["sid"]
        assert len(statement["resources"]) == 1, statement["sid"]
    assert sorted(r for s in reads for r in s["resources"]) == sorted(map(var, SECRETS.values()))
    # The optional secrets' statements exist only when their variable is set.
    dynamic = dynamic_statements(document)
    api_keys = dynamic["ReadTheApiKeys"]
    assert api_keys["for_each"] == (
        "${var.api_keys_secret_arn == null ? [] : [var.api_keys_secret_arn]}"
    )
    decrypt = dynamic["DecryptTheSecretsThroughSecretsManager"]
    assert decrypt["for_each"] == (
        "${var.secrets_kms_key_arn == null ? [] : [var.secrets_kms_key_arn]}"
    )
    (content,) = decrypt["content"]
    assert content["actions"] == ["kms:Decrypt"]
    assert content["resources"] == [var("secrets_kms_key_arn")]
    assert content["condition"] == [
        {
            "test": "StringEquals",
            "variable": "kms:ViaService",
            "values": ["secretsmanager.${local.region}.amazonaws.com"],
        }
    ]
    actions = {a for s in found for a in s["actions"]}
    assert actions == {"secretsmanager:GetSecretValue", "kms:Decrypt"}


def test_access_control_keys_come_from_secrets_manager(module: Config) -> None:
    # Signing keys are required (the module always deploys with access control); API keys are
    # optional. Both name a complete Secrets Manager ARN, never the keys themselves.
    for env_name, variable in SECRETS.items():
        body = module.variables[variable]
        assert body["type"] == "string" and env_name in body["description"], variable
        pattern = arn_pattern(module, variable)
        assert pattern.pattern.startswith("^arn:aws[a-z-]*:secretsmanager:")
        assert pattern.fullmatch(
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:media-proxy/keys-AbCdEf"
        )
        assert not pattern.fullmatch("arn:aws:secretsmanager:eu-west-1:123456789012:secret:*")
        assert not pattern.fullmatch('{"local": "a-literal-secret"}')
    assert "default" not in module.variables["signing_keys_secret_arn"]
    assert module.variables["api_keys_secret_arn"]["default"] is None
    assert module.variables["secrets_kms_key_arn"]["default"] is None
    assert ":kms:" in arn_pattern(module, "secrets_kms_key_arn").pattern
    # local.secrets maps each container variable to its ARN variable, and nothing else.
    secrets = module.locals["secrets"]
    for env_name, variable in SECRETS.items():
        assert re.search(rf"\b{env_name}\s*=\s*var\.{variable}\b", secrets), env_name
    assert set(re.findall(r"\bvar\.[a-z0-9_]+", secrets)) == {f"var.{v}" for v in SECRETS.values()}
    definition = module.of_type("aws_ecs_task_definition")["proxy"]["container_definitions"]
    assert (
        "secrets = [for k in sort(keys(local.secrets)) : {name = k, valueFrom = local.secrets[k]}]"
        in definition
    )
    # Never in the plain environment, and extra_environment may not bring them back.
    for plain in (module.locals["environment"], definition):
        for env_name in SECRETS:
            assert not re.search(rf"\b{env_name}\b", plain), env_name
    (guard,) = module.variables["extra_environment"]["validation"]
    assert '!contains(["PROXY_API_KEYS", "PROXY_SIGNING_KEYS"], k)' in guard["condition"]
    assert re.search(
        r"PROXY_SIGNING_KEY_ID\s*=\s*var\.signing_key_id\b", module.locals["environment"]
    )
    # The module never holds a secret value (it would end up in the state).
    assert not module.of_type("aws_secretsmanager_secret_version")


def test_log_groups_keep_logs_a_year_encrypted(module: Config) -> None:
    groups = module.of_type("aws_cloudwatch_log_group")
    assert groups
    for name, group in groups.items():
        assert default_of(module, group["retention_in_days"]) >= 365, name
        assert group["kms_key_id"] == ref("aws_kms_key", "this", "arn"), name


def test_load_balancer_checks_healthz_and_redirects_http(module: Config) -> None:
    (group,) = module.of_type("aws_lb_target_group").values()
    assert group["health_check"][0]["path"] == "/healthz"
    assert group["health_check"][0]["matcher"] == "200"
    listeners = {body["protocol"]: body for body in module.of_type("aws_lb_listener").values()}
    assert set(listeners) == {"HTTPS", "HTTP"}
    https = listeners["HTTPS"]
    assert https["port"] == 443 and https["certificate_arn"] == "${var.certificate_arn}"
    assert https["ssl_policy"].startswith("ELBSecurityPolicy-TLS13-")
    action = listeners["HTTP"]["default_action"][0]
    assert action["type"] == "redirect"
    assert action["redirect"][0] == {"protocol": "HTTPS", "port": "443", "status_code": "HTTP_301"}
    lb = module.of_type("aws_lb")["this"]
    assert lb["drop_invalid_header_fields"] is True
    assert default_of(module, lb["idle_timeout"]) >= 600
    assert lb["access_logs"][0]["enabled"] is True


def test_repository_is_immutable_and_scanned(module: Config) -> None:
    repository = module.of_type("aws_ecr_repository")["proxy"]
    assert repository["image_tag_mutability"] == "IMMUTABLE"
    assert repository["image_scanning_configuration"][0]["scan_on_push"] is True


def test_tasks_run_the_s3_backend(module: Config) -> None:
    environment = module.locals["environment"]
    for name in ("PROXY_BACKEND", "PROXY_S3_BUCKET", "PROXY_S3_PREFIX", "PROXY_S3_CLIENT"):
        assert name in environment, name
    assert re.search(r"PROXY_BACKEND\s*=\s*\"s3\"", environment)
    definition = module.of_type("aws_ecs_task_definition")["proxy"]
    assert "readonlyRootFilesystem = true" in definition["container_definitions"]
    assert "local.environment" in definition["container_definitions"]
    service = module.of_type("aws_ecs_service")["proxy"]
    assert service["network_configuration"][0]["assign_public_ip"] is False


def test_autoscaling_tracks_cpu_and_requests(module: Config) -> None:
    metrics = {
        body["target_tracking_scaling_policy_configuration"][0]["predefined_metric_specification"][
            0
        ]["predefined_metric_type"]
        for body in module.of_type("aws_appautoscaling_policy").values()
        if body["policy_type"] == "TargetTrackingScaling"
    }
    assert metrics == {"ECSServiceAverageCPUUtilization", "ALBRequestCountPerTarget"}


def test_cloudfront_is_optional_and_caches_per_range(module: Config) -> None:
    assert module.variables["enable_cloudfront"]["type"] == "bool"
    assert module.variables["enable_cloudfront"]["default"] is False
    for kind in (
        "aws_cloudfront_distribution",
        "aws_cloudfront_cache_policy",
        "aws_cloudfront_response_headers_policy",
    ):
        for name, body in module.of_type(kind).items():
            assert body["count"] == "${var.enable_cloudfront ? 1 : 0}", f"{kind}.{name}"
    policy = module.of_type("aws_cloudfront_cache_policy")["ranges"]
    headers = policy["parameters_in_cache_key_and_forwarded_to_origin"][0]["headers_config"][0]
    assert headers["header_behavior"] == "whitelist"
    assert "Range" in headers["headers"][0]["items"]
    behavior = module.of_type("aws_cloudfront_distribution")["this"]["default_cache_behavior"][0]
    assert behavior["cache_policy_id"] == "${aws_cloudfront_cache_policy.ranges[0].id}"
    assert behavior["viewer_protocol_policy"] == "redirect-to-https"


@pytest.mark.parametrize("directory", [MODULE, EXAMPLE], ids=["module", "example"])
def test_versions_are_pinned(directory: Path) -> None:
    (block,) = load_dir(directory).terraform
    assert re.fullmatch(r">= 1\.[0-9.]+, < 2\.0\.0", block["required_version"])
    aws = block["required_providers"][0]["aws"]
    assert aws["source"] == "hashicorp/aws"
    assert re.fullmatch(r"~> [56]\.[0-9]+", aws["version"])


@pytest.mark.parametrize("directory", [MODULE, EXAMPLE], ids=["module", "example"])
def test_variables_and_outputs_are_documented(directory: Path) -> None:
    config = load_dir(directory)
    assert config.variables and config.outputs
    for name, variable in config.variables.items():
        assert variable.get("description"), f"{name}: description"
        assert variable.get("type"), f"{name}: type"
        loose = variable["type"] in {"bool", "${map(string)}", "${list(string)}"}
        if directory == MODULE and not loose:
            assert variable.get("validation"), f"{name}: validation"
    for name, output in config.outputs.items():
        assert output.get("description"), f"output {name}: description"


def test_example_uses_the_local_module(example: Config) -> None:
    call = example.modules["media_proxy"]
    assert call["source"] == "../../modules/media-proxy"
    assert call["s3_client"] == "aiobotocore"
    required = {n for n, v in load_dir(MODULE).variables.items() if "default" not in v}
    assert required <= set(call), f"the example misses {required - set(call)}"


def test_the_example_turns_access_control_on(example: Config) -> None:
    call = example.modules["media_proxy"]
    for variable in (*SECRETS.values(), "signing_key_id", "secrets_kms_key_arn"):
        assert call[variable] == var(variable), variable
    assert "default" not in example.variables["signing_keys_secret_arn"]
    tfvars = load(EXAMPLE / "example.tfvars")
    module = load_dir(MODULE)
    for variable in SECRETS.values():
        assert arn_pattern(module, variable).fullmatch(tfvars[variable]), variable
        assert ":123456789012:" in tfvars[variable], "a placeholder account"
    assert tfvars["signing_key_id"]


def test_checkov_skips_give_reasons() -> None:
    skip = re.compile(r"#\s*checkov:skip=([A-Z0-9_]+)(?::(.*))?")
    found = 0
    for path in TF_FILES:
        for line in path.read_text(encoding="utf-8").splitlines():
            if match := skip.search(line):
                found += 1
                assert match.group(2) and len(match.group(2).strip()) >= 20, f"{path}: {line}"
    assert found > 0
