"""The OpenAPI contract (``api/openapi.yaml``): valid OpenAPI 3.1, the same routes as the app, the
request bodies of the pydantic models, the security each route accepts, served as is, and the
legacy mirror announcing its deprecation."""

from __future__ import annotations

import re
from email.utils import parsedate_to_datetime

import pytest
import pytest_asyncio
import yaml
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from api import schemas as requests_schemas
from api.app import SPEC_PATH, create_app
from api.versioning import API_V1, UNVERSIONED, canonical
from domain.operations import Operation, Progress
from domain.org_entity import OrgSnapshot
from domain.resources import TIER_INSTANCE_TYPES
from domain.settings import Settings
from domain.status import OrgStatus, OrphanDeletionStatus, WorkspaceStatus

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
SLUG = r"^[a-z][a-z0-9-]{1,38}[a-z0-9]$"
WORKSPACE_ID = r"^ws_[0-9a-f]{12}$"
KEY_ID = r"^(tfk_)?[0-9a-f]{12}$"
TOKEN_ID = r"^(tfo_)?[0-9a-f]{12}$"
REPORT_ID = r"^[0-9]{1,18}$"
SAMPLE_PARAMS = {"slug": "example-co", "workspace_id": "ws_0123456789ab", "key_id": "0123456789ab", "report_id": "1"}
# The component responses that are not failures.
SUCCESS_RESPONSES = {"KeyMinted", "OrgCommandAccepted", "OrgDecisionAccepted"}

# Which request model each body is (api/schemas.py), by operation.
REQUEST_MODELS = {
    ("post", "/api/v1/orgs"): "OrgCreateRequest",
    ("patch", "/api/v1/orgs/{slug}"): "OrgQuotaUpdate",
    ("delete", "/api/v1/orgs/{slug}"): "DeleteOrgRequest",
    ("post", "/api/v1/orgs/{slug}/keys"): "KeyCreateRequest",
    ("post", "/api/v1/orgs/{slug}/suspend"): "SuspendRequest",
    ("post", "/api/v1/keys"): "KeyCreateRequest",
    ("post", "/api/v1/operator-tokens"): "OperatorTokenCreateRequest",
    ("post", "/api/v1/reconcile/orphan-deletions"): "OrphanDeletionRequest",
    ("post", "/api/v1/workspaces"): "WorkspaceCreateRequest",
    ("post", "/api/v1/registry/register"): "AgentRegisterRequest",
    ("post", "/api/v1/registry/heartbeat"): "AgentHeartbeatRequest",
}


@pytest.fixture(scope="module")
def spec() -> dict:
    return yaml.safe_load(SPEC_PATH.read_text())


def spec_operations(spec: dict) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in spec["paths"].items() for method in item if method in HTTP_METHODS}


def app_routes() -> set[tuple[str, str]]:
    app = create_app(Settings())
    return {(r.method, r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"}


def is_canonical(path: str) -> bool:
    return path.startswith(API_V1 + "/") or path in UNVERSIONED


def resolve(spec: dict, node):
    while isinstance(node, dict) and "$ref" in node:
        target = spec
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        extra = {k: v for k, v in node.items() if k != "$ref"}
        node = {**target, **extra}
    return node


def operations(spec: dict):
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method in HTTP_METHODS:
                params = [resolve(spec, p) for p in item.get("parameters", []) + op.get("parameters", [])]
                yield method, path, op, params


# -- (a) a valid OpenAPI 3.1 document --------------------------------------------------------


def test_spec_is_valid_openapi_3_1(spec):
    assert spec["openapi"] == "3.1.0"
    validate(spec, cls=OpenAPIV31SpecValidator)


# -- (b) parity with the app's routes ---------------------------------------------------------


def test_spec_describes_exactly_the_canonical_routes(spec):
    canonical_routes = {(m, p) for m, p in app_routes() if is_canonical(p)}
    documented = spec_operations(spec)
    assert canonical_routes - documented == set(), "routes the spec lacks"
    assert documented - canonical_routes == set(), "documented operations the app does not have"


def test_every_legacy_route_mirrors_a_documented_one(spec):
    legacy = {(m, p) for m, p in app_routes() if not is_canonical(p)}
    assert legacy, "the deprecated mirror is gone: update info.description"
    assert {(m, canonical(p)) for m, p in legacy} <= spec_operations(spec)
    assert not any(p.startswith(("/cp/", "/workspaces", "/keys", "/registry/")) for p in spec["paths"])


# -- what each operation promises ----------------------------------------------------------


def expected_security(path: str) -> str | None:
    if path in UNVERSIONED:
        return None
    if path == "/api/v1/registry/register":
        return "registrationToken"
    if path == "/api/v1/registry/heartbeat":
        return "workspaceToken"
    if path.startswith(
        ("/api/v1/orgs", "/api/v1/teardowns", "/api/v1/operator-tokens", "/api/v1/audit", "/api/v1/reconcile/")
    ):
        return "operatorBearer"
    return "orgApiKey"


def test_security_schemes(spec):
    schemes = spec["components"]["securitySchemes"]
    assert set(schemes) == {"operatorBearer", "orgApiKey", "registrationToken", "workspaceToken"}
    assert all(s["type"] == "http" and s["scheme"] == "bearer" for s in schemes.values())
    assert "security" not in spec  # each operation names its own
    for method, path, op, params in operations(spec):
        scheme = expected_security(path)
        if scheme == "orgApiKey":  # the scope each one requires: tests/test_scopes.py holds it to the code
            assert [list(r) for r in op["security"]] == [[scheme]] and len(op["security"][0][scheme]) == 1
        else:
            assert op["security"] == ([{scheme: []}] if scheme else []), (method, path)
        has_routing_header = any(p["in"] == "header" and p["name"] == "X-Org-Slug" for p in params)
        assert has_routing_header == (scheme == "orgApiKey"), (method, path)
        if scheme == "orgApiKey":
            assert "403" in op["responses"], (method, path)


def test_path_parameters_are_declared_with_their_patterns(spec):
    patterns = {
        "slug": SLUG,
        "workspace_id": WORKSPACE_ID,
        "key_id": KEY_ID,
        "token_id": TOKEN_ID,
        "report_id": REPORT_ID,
        "deletion_id": REPORT_ID,
    }
    for method, path, _, params in operations(spec):
        in_path = {p["name"]: p for p in params if p["in"] == "path"}
        assert set(in_path) == set(re.findall(r"{(\w+)}", path)), (method, path)
        for name, param in in_path.items():
            assert param["required"] is True
            assert param["schema"]["pattern"] == patterns[name], (method, path, name)
    # The same patterns as the request models'.
    assert requests_schemas.OrgCreateRequest.model_json_schema()["properties"]["slug"]["pattern"] == SLUG
    assert (
        requests_schemas.AgentRegisterRequest.model_json_schema()["properties"]["workspace_id"]["pattern"]
        == WORKSPACE_ID
    )


def test_responses_are_documented_honestly(spec):
    error_ref = {"$ref": "#/components/schemas/Error"}
    for name, response in spec["components"]["responses"].items():
        schema = response["content"]["application/json"]["schema"]
        if name not in SUCCESS_RESPONSES and schema != error_ref:
            assert error_ref in resolve(spec, schema)["allOf"], name  # an Error with more fields
    for method, path, op, _ in operations(spec):
        responses = op["responses"]
        assert all(re.fullmatch(r"[1-5]\d\d", code) for code in responses), (method, path)
        for code, response in responses.items():
            response = resolve(spec, response)
            assert "X-Request-Id" in response.get("headers", {}), (method, path, code)
            if code == "202":
                assert {"Location", "Retry-After"} <= set(response["headers"]), (method, path)
            if code in ("429", "503") and path not in UNVERSIONED:
                assert "Retry-After" in response["headers"], (method, path, code)
        if path in UNVERSIONED:
            continue
        assert {"401", "429", "503"} <= set(responses), (method, path)
        if "requestBody" in op:
            assert {"400", "413", "415"} <= set(responses), (method, path)
        if "{slug}" in path:
            assert {"400", "404"} <= set(responses), (method, path)


def constraints(spec: dict, schema: dict) -> dict:
    """A schema's constraints, with $refs resolved and nullability made explicit, ignoring
    annotations: the same for pydantic's ``anyOf [X, null]`` and OpenAPI 3.1's ``type: [x, 'null']``."""
    schema = resolve(spec, schema)
    branches = schema.get("anyOf") or schema.get("oneOf")
    if branches:
        parts = [constraints(spec, b) for b in branches]
        nullable = any(p["types"] == {"null"} for p in parts)
        parts = [p for p in parts if p["types"] != {"null"}]
        if len(parts) == 1:
            return {**parts[0], "nullable": nullable or parts[0]["nullable"]}
        merged = {"types": set().union(*(p["types"] for p in parts)), "nullable": nullable}
        assert all(set(p) == {"types", "nullable"} for p in parts), schema
        return merged
    types = schema.get("type", [])
    types = {types} if isinstance(types, str) else set(types)
    result = {"types": types - {"null"} or types, "nullable": "null" in types and len(types) > 1}
    for key in (
        "pattern",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minItems",
        "maxItems",
        "const",
    ):
        if key in schema:
            result[key] = schema[key]
    if "enum" in schema:
        result["enum"] = sorted(schema["enum"])
    if "items" in schema:
        result["items"] = constraints(spec, schema["items"])
    return result


@pytest.mark.parametrize("model_name", sorted(set(REQUEST_MODELS.values())))
def test_request_schemas_match_the_pydantic_models(spec, model_name):
    model_schema = getattr(requests_schemas, model_name).model_json_schema()
    documented = spec["components"]["schemas"][model_name]
    assert documented["additionalProperties"] is False and model_schema["additionalProperties"] is False
    assert set(documented.get("required", [])) == set(model_schema.get("required", []))
    assert set(documented["properties"]) == set(model_schema["properties"])
    for name, field in model_schema["properties"].items():
        assert constraints(spec, documented["properties"][name]) == constraints(model_schema, field), name


def test_each_body_is_its_model(spec):
    bodies = {}
    for method, path, op, _ in operations(spec):
        if "requestBody" in op:
            body = op["requestBody"]
            assert list(body["content"]) == ["application/json"], (method, path)
            bodies[(method, path)] = body["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert bodies == REQUEST_MODELS
    # Optional bodies: suspend and delete read none as the defaults.
    optional = {
        k
        for k, v in REQUEST_MODELS.items()
        if not next(op for m, p, op, _ in operations(spec) if (m, p) == k)["requestBody"].get("required")
    }
    assert optional == {("post", "/api/v1/orgs/{slug}/suspend"), ("delete", "/api/v1/orgs/{slug}")}


@pytest.mark.parametrize("model", [Progress, OrgSnapshot], ids=lambda m: m.__name__)
def test_response_schema_matches_the_model(spec, model):
    documented = spec["components"]["schemas"][model.__name__]
    assert set(documented["properties"]) == set(model.model_fields)
    # model_dump() always emits every field, defaults included.
    assert set(documented["required"]) == set(model.model_fields)


def test_status_enums_match_the_model(spec):
    schemas = spec["components"]["schemas"]
    assert schemas["OrgStatus"]["enum"] == [s.value for s in OrgStatus]
    # adopt is never an org's operation, only a queued wait for a run from before its workflow.
    assert schemas["OrgOperation"]["enum"] == [o.value for o in Operation if o != Operation.adopt]
    assert schemas["OrgSnapshot"]["properties"]["queued"]["items"]["enum"] == [o.value for o in Operation]
    status_filter = next(p for p in spec["paths"]["/api/v1/orgs"]["get"]["parameters"] if p["name"] == "status")
    assert status_filter["schema"]["items"]["enum"] == [s.value for s in OrgStatus if s != OrgStatus.deleted]
    assert schemas["WorkspaceStatus"]["enum"] == [s.value for s in WorkspaceStatus]
    assert schemas["OrphanDeletionStatus"]["enum"] == [s.value for s in OrphanDeletionStatus]
    assert schemas["Workspace"]["properties"]["instance_type"]["enum"] == list(TIER_INSTANCE_TYPES.values())


# -- (c) and (d): the running app ------------------------------------------------------------


@pytest_asyncio.fixture
async def api(settings):
    # Only unauthenticated requests: the Temporal client (lazy, from the environment) is never used.
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    yield client
    await client.close()


async def test_served_spec_is_the_file(api):
    resp = await api.get("/openapi.yaml")
    assert resp.status == 200
    assert resp.content_type == "application/yaml"
    assert await resp.text() == SPEC_PATH.read_text()
    assert "Deprecation" not in resp.headers


def legacy_routes() -> list[tuple[str, str]]:
    return sorted((m, p) for m, p in app_routes() if not is_canonical(p))


async def test_legacy_mirror_is_deprecated_and_canonical_is_not(api):
    routes = legacy_routes()
    assert routes
    for method, template in routes:
        legacy = template.format(**SAMPLE_PARAMS)
        current = canonical(template).format(**SAMPLE_PARAMS)
        resp = await api.request(method, legacy)
        assert resp.status == 401, (method, legacy, resp.status)
        assert re.fullmatch(r"@\d+", resp.headers["Deprecation"]), (method, legacy)
        assert parsedate_to_datetime(resp.headers["Sunset"]).year >= 2026, (method, legacy)
        assert resp.headers["Link"] == f'<{current}>; rel="successor-version"', (method, legacy)
        assert (await resp.json())["code"] in ("UNAUTHORIZED", "REGISTRATION_REFUSED")

        resp = await api.request(method, current)
        assert resp.status == 401, (method, current, resp.status)
        for header in ("Deprecation", "Sunset", "Link"):
            assert header not in resp.headers, (method, current, header)


async def test_rate_limited_answer_is_as_documented(settings, spec):
    # The fuzz raises the limit to reach the handlers; here one request a minute shows the 429.
    from jsonschema import Draft202012Validator

    limited = settings.model_copy(update={"rate_limit_per_minute": 1.0, "rate_limit_burst": 1})
    client = TestClient(TestServer(create_app(limited)))
    await client.start_server()
    try:
        # An unauthenticated request is charged to its address after its answer: the one that
        # finds the bucket empty is still answered (401), the next is refused before auth.
        statuses = []
        for _ in range(3):
            resp = await client.get("/api/v1/teardowns")
            statuses.append(resp.status)
            if resp.status == 429:
                break
        assert statuses[-1] == 429 and set(statuses[:-1]) <= {401}, statuses
        assert int(resp.headers["Retry-After"]) >= 1 and resp.headers["X-Request-Id"]
        body = await resp.json()
        Draft202012Validator(spec["components"]["schemas"]["Error"]).validate(body)
        assert body["code"] == "RATE_LIMITED" and body["request_id"] == resp.headers["X-Request-Id"]
        assert (await client.get("/healthz")).status == 200  # probes are not limited
    finally:
        await client.close()
