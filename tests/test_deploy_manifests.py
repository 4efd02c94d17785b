"""Offline checks of the deployment artifacts: deploy/Dockerfile, deploy/compose.yaml, deploy/k8s/.

Nothing here runs a container or reaches a network. Schemas come from PyPI packages that ship them
(kubernetes-validate: Kubernetes JSON schemas; check-jsonschema: the Compose specification);
yamllint and dockerfile-parse do the linting and parsing. The rest are the project's own rules:
the settings the manifests name exist in ``domain.settings.Settings``, probes point at the ports
the processes listen on, nothing secret is written down, and the image runs the real entrypoints.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from domain.operations import SEARCH_ATTRIBUTES
from domain.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
CLOUD_ENV = DEPLOY / "temporal-cloud.env.example"
NAMESPACE = "tenantflow"

SETTING_FIELDS = set(Settings.model_fields)
# What a production process cannot do without (the defaults describe the local stack).
REQUIRED_SETTINGS = {
    "database_url",
    "audit_hmac_key",
    "neon_mode",
    "neon_project_id",
    "public_url",
    "platform_cidr",
    "aws_region",
    "agent_ami_id",
    "task_queue",
    "api_host",
    "worker_health_host",
}
REQUIRED_ENV = {f"TENANTFLOW_{name.upper()}" for name in REQUIRED_SETTINGS} | {"TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE"}
# Each process's own secrets, and only its own: the API faces the internet and calls neither AWS nor
# Neon, so it never holds their credentials (nor the worker's token signing key).
API_ONLY_ENV = {"TENANTFLOW_PROVISION_SECRET"}
WORKER_ONLY_ENV = {"TENANTFLOW_NEON_API_KEY", "TENANTFLOW_TOKEN_SIGNING_KEY"}
CLOUD_CREDENTIAL_ENV = re.compile(r"^(AWS_ACCESS_KEY|AWS_SECRET|AWS_SESSION_TOKEN|AWS_WEB_IDENTITY|AWS_ROLE_ARN)")


def required_env(command: str) -> set[str]:
    """What a process started with ``command`` cannot do without (check validates every setting)."""
    return REQUIRED_ENV | {
        "api": API_ONLY_ENV,
        "worker": WORKER_ONLY_ENV,
        "check": API_ONLY_ENV | WORKER_ONLY_ENV,
    }.get(command, set())


# The Temporal SDK's environment configuration (temporalio.envconfig).
TEMPORAL_ENV = {
    "TEMPORAL_ADDRESS",
    "TEMPORAL_NAMESPACE",
    "TEMPORAL_API_KEY",
    "TEMPORAL_TLS",
    "TEMPORAL_TLS_CLIENT_CERT_PATH",
    "TEMPORAL_TLS_CLIENT_KEY_PATH",
    "TEMPORAL_TLS_SERVER_CA_CERT_PATH",
    "TEMPORAL_TLS_SERVER_NAME",
    "TEMPORAL_TLS_DISABLE_HOST_VERIFICATION",
    "TEMPORAL_CONFIG_FILE",
    "TEMPORAL_PROFILE",
}
SECRET_NAME = re.compile(r"(PASSWORD|PWD|SECRET|API_KEY|TOKEN|DATABASE_URL|PRIVATE_KEY|ACCESS_KEY)", re.I)
PLACEHOLDER = "REPLACE_ME"
# Things that look like real credentials wherever they appear.
CREDENTIAL_PATTERNS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key id
    re.compile(r"\btf[pk]_[A-Za-z0-9]{8,}"),  # tenantflow operator / org keys
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"://[^\s:/@${}]+:(?!<|\.\.\.|REPLACE_ME)[^\s@${}]+@"),  # user:password@ in a URL (placeholders aside)
]
APP_COMMANDS = {"worker", "api", "check", "migrate"}


# ---------------------------------------------------------------------------------------------
# Loading


def k8s_files() -> list[Path]:
    return sorted(K8S.glob("*.yaml"))


def k8s_docs() -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for path in k8s_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") != "Kustomization":
                docs.append((path, doc))
    return docs


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in k8s_docs() if doc["kind"] == kind]


def one(kind: str, name: str) -> dict[str, Any]:
    found = [doc for doc in by_kind(kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for _, doc in k8s_docs():
        if doc["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def config_map_data() -> dict[str, str]:
    return {k: str(v) for cm in by_kind("ConfigMap") for k, v in cm.get("data", {}).items()}


def secret_template_keys() -> dict[str, set[str]]:
    return {s["metadata"]["name"]: set(s.get("stringData", {})) | set(s.get("data", {})) for s in by_kind("Secret")}


def container_env(container: dict[str, Any]) -> dict[str, str | None]:
    """Every variable a container gets: envFrom ConfigMaps and Secrets (template keys), then env."""
    cms = {cm["metadata"]["name"]: cm.get("data", {}) for cm in by_kind("ConfigMap")}
    secrets = secret_template_keys()
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update({k: str(v) for k, v in cms[source["configMapRef"]["name"]].items()})
        if "secretRef" in source:
            env.update({k: None for k in secrets[source["secretRef"]["name"]]})
    for item in container.get("env", []):
        env[item["name"]] = item.get("value")
    return env


def port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    raise AssertionError(f"container {container['name']} has no port named {port}")


def worker_graceful_shutdown_seconds() -> float:
    match = re.search(
        r"graceful_shutdown_timeout=timedelta\(seconds=(\d+(?:\.\d+)?)\)", (ROOT / "worker.py").read_text()
    )
    assert match, "worker.py no longer sets graceful_shutdown_timeout=timedelta(seconds=N)"
    return float(match.group(1))


def image_is_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("", "latest")


def assert_setting_names(names: set[str], where: str) -> None:
    unknown = sorted(n for n in names if n.removeprefix("TENANTFLOW_").lower() not in SETTING_FIELDS)
    assert not unknown, f"{where}: not fields of domain.settings.Settings: {unknown}"


def strip_interpolations(value: str) -> str:
    return re.sub(r"\$\{[^}]*\}", "", value)


# ---------------------------------------------------------------------------------------------
# YAML everywhere


def test_every_yaml_file_parses() -> None:
    files = [COMPOSE, *k8s_files()]
    assert len(files) >= 8
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, f"{path} is empty"
        assert all(isinstance(d, dict) for d in docs), path


def test_yamllint_clean() -> None:
    linter = pytest.importorskip("yamllint.linter")
    from yamllint.config import YamlLintConfig

    config = YamlLintConfig("""
extends: default
rules:
  line-length: {max: 140}
  document-start: disable
  comments: {min-spaces-from-content: 1}
  truthy: {check-keys: false}
""")
    problems = []
    for path in [COMPOSE, *k8s_files()]:
        problems += [f"{path.relative_to(ROOT)}:{p.line}: {p.desc}" for p in linter.run(path.read_text(), config)]
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------------
# Kubernetes


@pytest.fixture(scope="module")
def kubernetes_validate():
    return pytest.importorskip("kubernetes_validate")


def k8s_versions(kv) -> list[str]:
    # The oldest release the manifests promise to support, and the newest the package ships.
    return sorted({"1.29.0", kv.latest_version()})


def test_k8s_manifests_validate_against_kubernetes_schemas(kubernetes_validate) -> None:
    docs = k8s_docs()
    assert docs
    for version in k8s_versions(kubernetes_validate):
        for path, doc in docs:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                pytest.fail(f"{path.name} {doc['kind']}/{doc['metadata']['name']} (k8s {version}): {err}")


def test_k8s_schema_validation_is_real(kubernetes_validate) -> None:
    """The validator rejects a typo offline, so the test above is not a no-op."""
    broken = json.loads(json.dumps(one("Deployment", "tenantflow-worker")))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def test_k8s_structure() -> None:
    kinds = [doc["kind"] for _, doc in k8s_docs()]
    for kind in (
        "Namespace",
        "ConfigMap",
        "Secret",
        "ServiceAccount",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    ):
        assert kind in kinds, f"deploy/k8s has no {kind}"
    for path, doc in k8s_docs():
        assert doc.get("apiVersion") and doc.get("kind") and doc.get("metadata", {}).get("name"), path
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{path.name}: {doc['kind']} outside {NAMESPACE}"


def test_kustomization_lists_every_manifest_but_templates_and_jobs() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    for path in k8s_files():
        if path.name in ("kustomization.yaml", "secret.example.yaml", "check-job.yaml", "migrate-job.yaml"):
            assert path.name not in listed
        else:
            assert path.name in listed, f"{path.name} is not in kustomization.yaml"
    images = {i["name"] for i in kustomization.get("images", [])}
    for _, spec in pod_specs():
        for c in spec["containers"]:
            assert c["image"].rsplit(":", 1)[0] in images


def test_k8s_containers_are_pinned_resourced_and_locked_down() -> None:
    for name, spec in pod_specs():
        assert spec.get("serviceAccountName") in ("tenantflow-api", "tenantflow-worker"), name
        assert spec["securityContext"].get("runAsNonRoot") is True, name
        assert spec["securityContext"].get("runAsUser", 0) != 0, name
        for c in spec["containers"]:
            assert image_is_pinned(c["image"]), f"{name}: unpinned image {c['image']}"
            assert c.get("args") and c["args"][0] in APP_COMMANDS, f"{name}: command {c.get('args')}"
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c.get("resources", {}).get(kind, {})), f"{name}: {kind}"
            sc = c.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False and sc.get("readOnlyRootFilesystem") is True, name
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], name


def test_k8s_every_needed_variable_reaches_every_process() -> None:
    secrets = secret_template_keys()
    for name, spec in pod_specs():
        for c in spec["containers"]:
            for source in c.get("envFrom", []):
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets, f"{name}: unknown Secret {source}"
            env = container_env(c)
            # The migrate Job holds the owner's URL and nothing else the processes need.
            if name == "Job/tenantflow-migrate":
                missing = {"TENANTFLOW_MIGRATION_DATABASE_URL"} - set(env)
            else:
                missing = required_env(c["args"][0]) - set(env)
            assert not missing, f"{name}: missing {sorted(missing)}"
            assert env["TENANTFLOW_API_HOST"] == "0.0.0.0" and env["TENANTFLOW_WORKER_HEALTH_HOST"] == "0.0.0.0"


def test_k8s_tenantflow_variables_are_real_settings() -> None:
    names = set(re.findall(r"\bTENANTFLOW_[A-Z0-9_]+", "".join(p.read_text() for p in k8s_files())))
    assert names
    assert_setting_names(names, "deploy/k8s")


def test_k8s_no_literal_secrets() -> None:
    for s in by_kind("Secret"):
        values = {**s.get("stringData", {}), **s.get("data", {})}
        bad = {k: v for k, v in values.items() if v != PLACEHOLDER}
        assert not bad, f"Secret {s['metadata']['name']} holds values; only {PLACEHOLDER} placeholders belong here"
    for key in config_map_data():
        assert not SECRET_NAME.search(key), f"secret-looking {key} in a ConfigMap"
    for name, spec in pod_specs():
        for c in spec["containers"]:
            for item in c.get("env", []):
                if SECRET_NAME.search(item["name"]):
                    assert "value" not in item, f"{name}: {item['name']} set literally; use secretKeyRef"
            assert not any(k.startswith("AWS_ACCESS_KEY") or k.startswith("AWS_SECRET") for k in container_env(c))
    for path in k8s_files():
        text = path.read_text()
        for pattern in CREDENTIAL_PATTERNS:
            assert not pattern.search(text), f"{path.name}: {pattern.pattern}"


def test_k8s_aws_credentials_only_through_the_service_account_role() -> None:
    sa = one("ServiceAccount", "tenantflow-worker")
    assert "eks.amazonaws.com/role-arn" in sa["metadata"].get("annotations", {})
    assert PLACEHOLDER in sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]


def test_k8s_only_the_worker_gets_cloud_credentials() -> None:
    """The API pods get no provisioning role, no Neon key and no token signing key; the worker does.
    The API's role only reads the audit anchor bucket."""
    accounts = {sa["metadata"]["name"]: sa["metadata"].get("annotations", {}) for sa in by_kind("ServiceAccount")}
    api_role = accounts["tenantflow-api"].get("eks.amazonaws.com/role-arn", "")
    assert api_role.endswith("-tenantflow-audit-reader")
    assert api_role != accounts["tenantflow-worker"]["eks.amazonaws.com/role-arn"]
    api = one("Deployment", "tenantflow-api")["spec"]["template"]["spec"]
    worker = one("Deployment", "tenantflow-worker")["spec"]["template"]["spec"]
    assert api["serviceAccountName"] == "tenantflow-api"
    assert worker["serviceAccountName"] == "tenantflow-worker"
    (api_container,) = api["containers"]
    (worker_container,) = worker["containers"]
    api_env, worker_env = container_env(api_container), container_env(worker_container)
    assert not WORKER_ONLY_ENV & set(api_env), sorted(WORKER_ONLY_ENV & set(api_env))
    assert not [k for k in api_env if CLOUD_CREDENTIAL_ENV.match(k)]
    assert api_env.get("AWS_EC2_METADATA_DISABLED") == "true"
    assert WORKER_ONLY_ENV <= set(worker_env)
    assert not API_ONLY_ENV & set(worker_env)


def test_k8s_worker_deployment() -> None:
    worker = one("Deployment", "tenantflow-worker")
    spec = worker["spec"]["template"]["spec"]
    assert worker["spec"]["replicas"] == 2
    assert worker["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    # SIGTERM -> stop polling, up to graceful_shutdown_timeout for in-flight activities, then exit.
    assert spec["terminationGracePeriodSeconds"] > worker_graceful_shutdown_seconds() + 5
    (container,) = spec["containers"]
    assert container["args"] == ["worker"]
    health_port = int(container_env(container)["TENANTFLOW_WORKER_HEALTH_PORT"])
    assert health_port == Settings.model_fields["worker_health_port"].default == 9091
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert port_number(container, container[probe]["httpGet"]["port"]) == health_port, probe
    assert worker["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(health_port)


def test_k8s_api_deployment_service_pdb_hpa() -> None:
    api = one("Deployment", "tenantflow-api")
    spec = api["spec"]["template"]["spec"]
    assert api["spec"]["replicas"] == 2
    (container,) = spec["containers"]
    assert container["args"] == ["api"]
    api_port = int(container_env(container)["TENANTFLOW_API_PORT"])
    assert api_port == 8080
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert port_number(container, container[probe]["httpGet"]["port"]) == api_port, probe

    service = one("Service", "tenantflow-api")
    assert service["spec"]["selector"].items() <= api["spec"]["template"]["metadata"]["labels"].items()
    assert {port_number(container, p["targetPort"]) for p in service["spec"]["ports"]} == {api_port}

    labels_of = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in by_kind("Deployment")}
    covered = set()
    for pdb in by_kind("PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        matched = [n for n, labels in labels_of.items() if selector.items() <= labels.items()]
        assert len(matched) == 1, pdb["metadata"]["name"]
        assert pdb["spec"].get("minAvailable", 0) < 2 or pdb["spec"].get("maxUnavailable")
        covered |= set(matched)
    assert covered == {"tenantflow-api", "tenantflow-worker"}

    for hpa in by_kind("HorizontalPodAutoscaler"):
        assert hpa["spec"]["scaleTargetRef"]["name"] in labels_of
        assert hpa["spec"]["minReplicas"] >= 2


# ---------------------------------------------------------------------------------------------
# Compose


def app_services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in doc["services"].items() if (s.get("command") or [None])[0] in APP_COMMANDS}


def test_compose_validates_against_the_compose_specification() -> None:
    pytest.importorskip("check_jsonschema")
    import importlib.resources

    import jsonschema

    schema = json.loads(
        (importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text()
    )
    validator = jsonschema.Draft202012Validator(schema)
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(compose())]
    assert not errors, "\n".join(errors)
    assert list(validator.iter_errors({"services": {"x": {"image": "a:1", "restartt": "no"}}}))


def test_compose_services() -> None:
    doc = compose()
    services = doc["services"]
    for name in ("postgres", "temporal", "temporal-ui", "api"):
        assert name in services, f"compose has no {name}"
    assert services["temporal"]["image"].startswith("temporalio/server:")
    assert services["temporal-ui"]["image"].startswith("temporalio/ui:")
    assert services["postgres"]["image"].startswith("postgres:")
    workers = [n for n, s in app_services(doc).items() if s["command"] == ["worker"]]
    assert len(workers) >= 2, f"two workers expected, found {workers}"
    assert app_services(doc)["api"]["command"] == ["api"]
    for name, service in services.items():
        if "image" in service and "build" not in service:
            assert image_is_pinned(service["image"]), f"{name}: unpinned image {service['image']}"
    for name, service in app_services(doc).items():
        build = service["build"]
        assert (COMPOSE.parent / build["context"]).resolve() == ROOT, name
        assert (ROOT / build["dockerfile"]).resolve() == DOCKERFILE, name
        assert service.get("stop_grace_period"), name


def test_compose_dependencies_and_healthchecks() -> None:
    services = compose()["services"]
    for name, service in services.items():
        depends = service.get("depends_on", {})
        for dep, cond in depends.items() if isinstance(depends, dict) else ((d, {}) for d in depends):
            assert dep in services, f"{name} depends on unknown {dep}"
            if cond.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}, which has no healthcheck"
            if cond.get("condition") == "service_completed_successfully":
                assert services[dep].get("restart") == "no", dep
    assert "temporal-setup-schema" in services["temporal"]["depends_on"]
    for name, service in app_services(compose()).items():
        assert {"postgres", "temporal", "temporal-setup-namespace"} <= set(service["depends_on"]), name


def test_compose_ports_and_probes_match_the_processes() -> None:
    doc = compose()
    apps = app_services(doc)
    api = apps["api"]
    assert api["environment"]["TENANTFLOW_API_HOST"] == "0.0.0.0"
    api_port = int(api["environment"]["TENANTFLOW_API_PORT"])
    assert any(str(p).endswith(f":{api_port}") for p in api["ports"])
    assert f"127.0.0.1:{api_port}/readyz" in " ".join(api["healthcheck"]["test"])
    for name, service in apps.items():
        if service["command"] == ["worker"]:
            port = int(service["environment"]["TENANTFLOW_WORKER_HEALTH_PORT"])
            assert service["environment"]["TENANTFLOW_WORKER_HEALTH_HOST"] == "0.0.0.0"
            assert f"127.0.0.1:{port}/readyz" in " ".join(service["healthcheck"]["test"]), name
    # The Temporal UI and frontend are not published beyond the host's loopback.
    for name in ("temporal", "temporal-ui"):
        assert all(str(p).startswith("127.0.0.1:") for p in doc["services"][name].get("ports", [])), name


def test_compose_app_environment() -> None:
    doc = compose()
    for name, service in app_services(doc).items():
        env = service["environment"]
        missing = required_env(service["command"][0]) - set(env)
        assert not missing, f"{name}: missing {sorted(missing)}"
        for key, value in env.items():
            if key.startswith("TEMPORAL_"):
                # An empty TEMPORAL_API_KEY turns TLS on and an empty path is read as ".".
                assert not re.search(r"\$\{[A-Z_]+:?-\}", str(value)), f"{name}: {key} may be empty"
    namespace = doc["services"]["temporal-setup-namespace"]["environment"]["TEMPORAL_NAMESPACE"]
    assert app_services(doc)["api"]["environment"]["TEMPORAL_NAMESPACE"] in (
        namespace,
        f"${{TEMPORAL_NAMESPACE:-{namespace}}}",
    )


def test_compose_tenantflow_variables_are_real_settings() -> None:
    names = set(re.findall(r"\bTENANTFLOW_[A-Z0-9_]+", COMPOSE.read_text()))
    assert names
    assert_setting_names(names, "deploy/compose.yaml")


def test_compose_no_literal_secrets() -> None:
    doc = compose()
    for name, service in doc["services"].items():
        env = service.get("environment", {})
        assert isinstance(env, dict), f"{name}: use the mapping form of environment"
        for key, value in env.items():
            if not SECRET_NAME.search(key):
                continue
            value = str(value)
            refs = re.findall(r"\$\{([^}]*)\}", value)
            assert refs, f"{name}: {key} is a literal"
            for ref in refs:
                assert re.fullmatch(r"[A-Z0-9_]+:\?.*", ref), (
                    f"{name}: {key} must be required (${{VAR:?}}), got ${{{ref}}}"
                )
            rest = strip_interpolations(value)
            assert not re.search(r"://[^:/@]+:[^@]+@", rest), f"{name}: {key} carries a literal password"
            if "://" not in value:
                assert rest == "", f"{name}: {key} mixes a literal into the secret: {value!r}"
    text = COMPOSE.read_text()
    for pattern in CREDENTIAL_PATTERNS:
        assert not pattern.search(strip_interpolations(text)), pattern.pattern


def test_compose_inline_scripts_escape_interpolation() -> None:
    """Compose interpolates config contents: shell variables must be written $$VAR."""
    for name, config in compose().get("configs", {}).items():
        content = config.get("content", "")
        unescaped = re.findall(r"(?<!\$)\$(?!\$)[{A-Za-z_(]", content.replace("$$", ""))
        assert not unescaped, f"config {name} has unescaped $ (compose would substitute it)"


def test_compose_registers_the_search_attributes_the_code_uses() -> None:
    doc = compose()
    setup = doc["services"]["temporal-setup-namespace"]
    assert setup["image"].startswith("temporalio/admin-tools:")
    assert setup.get("restart") == "no"
    registered = set(setup["environment"]["SEARCH_ATTRIBUTES"].split())
    assert registered == set(SEARCH_ATTRIBUTES)
    assert set(SEARCH_ATTRIBUTES.values()) == {"Keyword"}
    (mount,) = setup["configs"]
    script = doc["configs"][mount["source"]]["content"]
    assert "search-attribute create" in script and "--type Keyword" in script
    assert setup["entrypoint"][-1] == mount["target"]
    # Admin tools and the server come from the same release.
    assert setup["image"].split(":")[1] == doc["services"]["temporal"]["image"].split(":")[1]
    assert doc["services"]["temporal-setup-schema"]["image"] == setup["image"]


# ---------------------------------------------------------------------------------------------
# Dockerfile


@pytest.fixture(scope="module")
def dockerfile():
    parse = pytest.importorskip("dockerfile_parse")
    return parse.DockerfileParser(path=str(DOCKERFILE))


def instructions(df, name: str) -> list[str]:
    return [i["value"] for i in df.structure if i["instruction"] == name]


def test_dockerfile_base_user_and_signals(dockerfile) -> None:
    froms = instructions(dockerfile, "FROM")
    assert froms and all(f.split()[0] == "python:3.11-slim" for f in froms), froms
    users = instructions(dockerfile, "USER")
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must run as a non-root user"
    assert instructions(dockerfile, "STOPSIGNAL") == ["SIGTERM"]
    assert not instructions(dockerfile, "HEALTHCHECK"), "orchestrators probe; no HEALTHCHECK in the image"
    env = dockerfile.envs
    assert env.get("PYTHONUNBUFFERED") == "1"
    assert env.get("TENANTFLOW_API_HOST") == "0.0.0.0" and env.get("TENANTFLOW_WORKER_HEALTH_HOST") == "0.0.0.0"
    assert_setting_names({k for k in env if k.startswith("TENANTFLOW_")}, "deploy/Dockerfile ENV")
    for key in list(env) + [a.split("=")[0] for a in instructions(dockerfile, "ARG")]:
        assert not SECRET_NAME.search(key), f"secret-looking {key} baked into the image"
    assert json.loads(instructions(dockerfile, "ENTRYPOINT")[-1]) == ["/usr/local/bin/tenantflow"]


def test_dockerfile_installs_production_dependencies_only(dockerfile) -> None:
    runs = " ".join(instructions(dockerfile, "RUN"))
    assert "['project']['dependencies']" in runs
    assert "pip install --no-deps ." in runs
    assert not re.search(r"\[(local|test)\]|\.\[", runs), "local/test extras must stay out of the image"


def test_dockerfile_copies_exist_and_cover_the_package(dockerfile) -> None:
    sources: set[str] = set()
    for value in instructions(dockerfile, "COPY"):
        parts = [p for p in value.split() if not p.startswith("--")]
        if value.startswith("--from"):
            continue
        for src in parts[:-1]:
            assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
            sources.add(src.rstrip("/"))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    modules = {f"{m}.py" for m in pyproject["tool"]["setuptools"]["py-modules"]}
    missing = (packages - {"devstack"}) | modules
    missing -= sources
    assert not missing, f"the image leaves out {sorted(missing)}"
    assert "devstack" not in sources and "tests" not in sources and ".tenantflow" not in sources


def test_dockerfile_commands_run_real_entrypoints(dockerfile) -> None:
    runs = "\n".join(instructions(dockerfile, "RUN"))
    commands = dict(re.findall(r"'\s*(\w+)\)\s+exec python -m ([\w.]+)", runs))
    assert APP_COMMANDS <= set(commands), commands
    for command, module in commands.items():
        path = ROOT / Path(*module.split("."))
        assert path.with_suffix(".py").is_file() or (path / "__main__.py").is_file(), f"{command}: {module}"
    assert commands["worker"] == "worker" and commands["api"] == "api" and commands["check"] == "tools.check"
    assert 'if __name__ == "__main__"' in (ROOT / "worker.py").read_text()
    assert (ROOT / "api" / "__main__.py").is_file()


# ---------------------------------------------------------------------------------------------
# Temporal Cloud env example and docs


def test_temporal_cloud_env_example() -> None:
    assigned = {}
    for line in CLOUD_ENV.read_text().splitlines():
        line = line.strip()
        if line.startswith("#"):
            line = line.lstrip("# ")
            if not re.fullmatch(r"[A-Z][A-Z0-9_]*=\S*", line):
                continue
            key, _, value = line.partition("=")
        elif line:
            key, _, value = line.partition("=")
            assert value, f"{key} is empty: an empty TEMPORAL_* value changes the connection"
        else:
            continue
        assigned[key] = value
    assert {
        "TEMPORAL_ADDRESS",
        "TEMPORAL_NAMESPACE",
        "TEMPORAL_API_KEY",
        "TEMPORAL_TLS_CLIENT_CERT_PATH",
        "TEMPORAL_TLS_CLIENT_KEY_PATH",
    } <= set(assigned)
    unknown = {k for k in assigned if k.startswith("TEMPORAL_")} - TEMPORAL_ENV
    assert not unknown, f"not read by the Temporal SDK: {unknown}"
    assert_setting_names({k for k in assigned if k.startswith("TENANTFLOW_")}, CLOUD_ENV.name)
    for pattern in CREDENTIAL_PATTERNS:
        assert not pattern.search(CLOUD_ENV.read_text()), pattern.pattern


def test_deploy_docs_name_real_settings_and_files() -> None:
    for path in (ROOT / "docs" / "deploy.md", DEPLOY / "README.md"):
        text = path.read_text()
        assert_setting_names(set(re.findall(r"\bTENANTFLOW_[A-Z0-9_]*[A-Z0-9]\b", text)), str(path.relative_to(ROOT)))
        for ref in re.findall(r"\b(deploy/[\w./-]+\.(?:yaml|example|md)|deploy/Dockerfile)\b", text):
            assert (ROOT / ref).exists(), f"{path.name} names {ref}, which does not exist"
    guide = (ROOT / "docs" / "deploy.md").read_text()
    for topic in ("workflow.patched", "tests/test_replay.py", "search-attribute", "tools.check", "IRSA"):
        assert topic in guide, f"docs/deploy.md does not cover {topic}"


def test_compose_only_the_workers_get_cloud_credentials() -> None:
    apps = app_services(compose())
    api = apps["api"]
    assert not WORKER_ONLY_ENV & set(api["environment"]), sorted(WORKER_ONLY_ENV & set(api["environment"]))
    assert not [k for k in api["environment"] if CLOUD_CREDENTIAL_ENV.match(k)]
    assert api["environment"]["AWS_EC2_METADATA_DISABLED"] == "true"
    # The file that may hold static AWS keys is read by the workers (and the check) only.
    assert all("worker.env" not in str(f) for f in api.get("env_file", []))
    workers = [s for s in apps.values() if s["command"] == ["worker"]]
    for worker in workers:
        assert WORKER_ONLY_ENV <= set(worker["environment"])
        assert not API_ONLY_ENV & set(worker["environment"])
        assert any("worker.env" in str(f) for f in worker["env_file"])
