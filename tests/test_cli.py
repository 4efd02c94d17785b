"""The operator CLI (starter.py) against the real API, worker, Temporal, moto and Neon servers: exit
codes from the state each change left (0 done, 1 failed, 2 refused, 3 parked, 4 unreachable), the
first line from the command's own answer, ``--json``, ``watch`` on every settled state, secrets
found from any directory, empty lists, and the API's field names turned into the CLI's flags."""

from __future__ import annotations

import asyncio
import io
import json
import os
import secrets
import shutil
import sys
from pathlib import Path

import pytest
import pytest_asyncio
import requests
from aiohttp.test_utils import TestClient, TestServer

import starter
from api.app import create_app
from devstack.procs import free_port
from tests.test_audit_anchor import own  # noqa: F401 - a fixture: settings on a database of their own
from tests.test_lifecycle import stack  # noqa: F401 - the fixture

ROOT = Path(starter.__file__).resolve().parent
CLI_ENV = ("TENANTFLOW_PROVISION_SECRET", "TENANTFLOW_OPERATOR_TOKEN", "TENANTFLOW_ORG_KEY", "TENANTFLOW_STATE_DIR")


class Cli:
    """``starter.py`` in a thread (the API runs on this test's event loop), as the operator."""

    def __init__(self, url: str, secret: str):
        self.url, self.secret = url, secret

    async def __call__(self, *argv: str, org_key: str | None = None) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        env = {"TENANTFLOW_PROVISION_SECRET": self.secret, **({"TENANTFLOW_ORG_KEY": org_key} if org_key else {})}
        saved = {name: os.environ.pop(name, None) for name in CLI_ENV}
        os.environ.update(env)
        try:
            code = await asyncio.to_thread(starter.main, ["--api-url", self.url, *argv], out, err)
        finally:
            for name in CLI_ENV:
                os.environ.pop(name, None)
            os.environ.update({k: v for k, v in saved.items() if v is not None})
        return code, out.getvalue(), err.getvalue()

    async def json(self, *argv: str, org_key: str | None = None) -> tuple[int, dict]:
        code, out, err = await self(*argv, "--json", org_key=org_key)
        assert err == "", err
        return code, json.loads(out)  # one document, nothing else


@pytest.fixture
def cli(stack) -> Cli:  # noqa: F811
    api, settings, _ = stack
    return Cli(str(api.make_url("/")).rstrip("/"), settings.provision_secret.get_secret_value())


@pytest.fixture
def boot_for(stack):  # noqa: F811
    """Boots the agents of an org's instances."""
    return stack[2]


def new_slug() -> str:
    return f"c{secrets.token_hex(4)}"


async def onboard(cli: Cli, network, slug: str, name: str = "Cli Corp") -> tuple[int, str]:
    vpc_id, subnets = network
    code, out, err = await cli(
        "onboard", "--slug", slug, "--name", name, "--vpc-id", vpc_id, "--subnet-ids", ",".join(subnets)
    )
    assert err == "", err
    return code, out


async def settles(cli: Cli, *argv: str, timeout: float = 60) -> tuple[int, str, str]:
    """A following command returns by itself, within ``timeout``."""
    return await asyncio.wait_for(cli(*argv), timeout)


async def test_suspend_resume_delete_exit_codes_and_first_lines(cli, network, boot_for):
    slug = new_slug()
    code, out = await onboard(cli, network, slug)
    assert code == 0, out
    assert out.splitlines()[0].startswith("accepted: org_") and '"status": "active"' in out

    code, out, _ = await settles(cli, "suspend", slug, "--reason", "unpaid invoice")
    assert code == 0, out
    first = out.splitlines()[0]
    assert first.startswith(f"{slug}: suspending (suspend accepted"), out
    assert "active" not in first
    code, out, _ = await settles(cli, "watch", slug)
    assert code == 0 and '"status": "suspended"' in out, out
    code, org = await cli.json("status", slug)
    assert code == 0 and org["status"] == "suspended" and org["status_reason"] == "unpaid invoice"

    code, out, _ = await settles(cli, "resume", slug)
    assert code == 0, out
    assert out.splitlines()[0].startswith(f"{slug}: resuming (resume accepted"), out

    # Refusals: 2, with the API's field names as the CLI's flags.
    code, out, _ = await cli("delete", slug, "--confirm", "other")
    assert code == 2 and out.startswith("refused (400)") and "--confirm must equal" in out, out
    code, refused = await cli.json("delete", slug, "--confirm", "other")
    assert code == 2 and refused["http_status"] == 400 and refused["code"] == "CONFIRMATION_REQUIRED"
    code, out, _ = await cli("resume", slug)
    assert code == 2 and out.startswith("refused (409)"), out

    code, key = await cli.json("mint-key", slug, "--name", "cli")
    assert code == 0 and key["key"].startswith("tfk_")
    code, out, _ = await cli("workspace", "list", org_key=key["key"])
    assert code == 0 and out == "no workspaces\n"
    boot_for(org["id"])
    code, created = await asyncio.wait_for(
        cli.json("workspace", "create", "--name", "w1", "--role", "cli test", "--tier", "1", org_key=key["key"]), 90
    )
    assert code == 0 and created["status"] == "running"
    code, out, _ = await cli("delete", slug, "--confirm", slug)
    assert code == 2 and "pass --delete-workspaces" in out and "delete_workspaces" not in out, out

    code, out, _ = await settles(cli, "delete", slug, "--confirm", slug, "--delete-workspaces", timeout=120)
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith(f"{slug}: deleting (delete accepted"), out
    assert lines[-1].startswith(f"deleted {slug}: ") and "1 workspaces" in lines[-1], out
    code, out, _ = await settles(cli, "watch", slug)
    assert code == 0 and f"deleted {slug}" in out, out
    code, deleted = await cli.json("watch", slug)
    assert code == 0 and deleted["status"] == "deleted" and deleted["receipt"]["slug"] == slug


async def test_a_failed_org_exits_1_and_its_delete_exits_0(cli, network, neon_faults, neon_url):
    slug = new_slug()
    neon_faults("/projects/{project_id}/branches", 403, method="POST", count=-1)
    code, out = await onboard(cli, network, slug)
    assert code == 1 and "FAILED (failed): " in out and "NeonAccessDenied" in out, out
    code, out, _ = await settles(cli, "watch", slug)
    assert code == 1 and "FAILED" in out, out
    code, org = await cli.json("status", slug)
    assert code == 1 and org["status"] == "failed"

    code, out, _ = await settles(cli, "delete", slug, "--confirm", slug)
    assert code == 0, out
    assert out.splitlines()[0].startswith(f"{slug}: deleting (delete accepted"), out  # never the stale "failed"
    assert "FAILED" not in out and out.splitlines()[-1].startswith(f"deleted {slug}: "), out

    # The deletion released the slug: another request for it is a new org.
    requests.delete(f"{neon_url[0]}/__devstack/faults", timeout=5).raise_for_status()
    code, out = await onboard(cli, network, slug, name="Cli Corp Again")
    assert code == 0 and '"status": "active"' in out, out
    code, again = await cli.json("status", slug)
    assert code == 0 and again["name"] == "Cli Corp Again" and again["id"] != org["id"], again


async def test_a_failed_onboarding_is_retried_until_active(cli, network, neon_faults, neon_url):
    slug = new_slug()
    neon_faults("/projects/{project_id}/branches", 403, method="POST", count=-1)
    code, out = await onboard(cli, network, slug)
    assert code == 1 and "NeonAccessDenied" in out, out
    requests.delete(f"{neon_url[0]}/__devstack/faults", timeout=5).raise_for_status()
    code, out, _ = await settles(cli, "retry", slug)
    assert code == 0 and '"status": "active"' in out, out
    code, org = await cli.json("status", slug)
    assert code == 0 and org["status"] == "active" and org["failure_reason"] is None, org


async def test_onboarding_a_network_ec2_does_not_know_is_refused_in_one_line(cli, network):
    slug = new_slug()
    code, out = await onboard(cli, ("vpc-0000000000", network[1]), slug)
    assert code == 2, out
    assert out.startswith("refused (400): vpc vpc-0000000000 does not exist in us-east-1; ") and out.count("\n") == 1
    code, out, _ = await cli("status", slug)
    assert code == 2 and out.startswith("refused (404)"), out


async def test_a_parked_teardown_exits_3_until_it_is_finished(cli, network, neon_faults, neon_url):
    slug = new_slug()
    assert (await onboard(cli, network, slug))[0] == 0
    neon_faults("/projects/{project_id}/branches/{branch_id}", 403, method="DELETE", count=-1)

    code, out, _ = await settles(cli, "delete", slug, "--confirm", slug)
    assert code == 3, out
    assert "PARKED on delete_database: " in out and f"starter.py retry {slug}" in out, out
    code, out, _ = await settles(cli, "watch", slug)
    assert code == 3 and "PARKED on delete_database" in out, out
    code, listed = await cli.json("teardowns")
    assert code == 0 and any(t["slug"] == slug and t["parked"] for t in listed["teardowns"])
    code, out, _ = await cli("teardowns")
    assert any(line.startswith(slug) and "PARKED on delete_database" in line for line in out.splitlines()), out

    code, parked = await asyncio.wait_for(cli.json("retry", slug), 60)  # the fault persists: parks again
    assert code == 3 and parked["progress"]["waiting_for_operator"], parked

    # The org's workflow learns that the step parked again a moment after its progress shows it:
    # until then an abandon is refused (2), and the operator sends it again.
    for _ in range(50):
        code, out, _ = await cli("abandon", slug)
        if code != 2:
            break
        await asyncio.sleep(0.2)
    assert code == 0 and f"abandoned: delete of {slug}" in out, out
    code, out, _ = await settles(cli, "watch", slug)
    assert code == 3 and "abandoned by" in out and f"starter.py delete {slug} --confirm {slug}" in out, out

    requests.delete(f"{neon_url[0]}/__devstack/faults", timeout=5).raise_for_status()
    code, out, _ = await settles(cli, "delete", slug, "--confirm", slug)
    assert code == 0 and out.splitlines()[-1].startswith(f"deleted {slug}"), out


def test_an_unreachable_api_is_one_line_on_stderr_and_exit_4():
    url = f"http://127.0.0.1:{free_port()}"
    out, err = io.StringIO(), io.StringIO()
    os.environ["TENANTFLOW_PROVISION_SECRET"] = "tfp_unused"
    try:
        for argv in (["orgs"], ["watch", "acme"], ["delete", "acme", "--confirm", "acme", "--json"]):
            assert starter.main(["--api-url", url, *argv], out, err) == starter.EXIT_UNREACHABLE
    finally:
        del os.environ["TENANTFLOW_PROVISION_SECRET"]
    assert out.getvalue() == ""
    lines = err.getvalue().splitlines()
    assert len(lines) == 3
    assert all(line.startswith(f"cannot reach the tenantflow API at {url}") for line in lines), lines
    assert all(line.endswith("start it with: python -m devstack") for line in lines), lines


async def run_script(script: Path, cwd: Path, env: dict[str, str], *argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        *argv,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_secrets_are_found_next_to_the_script_from_any_directory(cli, tmp_path):
    """A checkout elsewhere (a copy of the script, its saved state beside it), run from a third
    directory with no credential in the environment."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (project / ".tenantflow").mkdir(parents=True)
    elsewhere.mkdir()
    shutil.copy(ROOT / "starter.py", project / "starter.py")
    (project / ".tenantflow" / "secrets.json").write_text(json.dumps({"provision_secret": cli.secret}))
    env = {k: v for k, v in os.environ.items() if k not in CLI_ENV} | {"PYTHONPATH": str(ROOT)}

    code, out, err = await run_script(project / "starter.py", elsewhere, env, "--api-url", cli.url, "orgs", "--json")
    assert code == 0, err
    assert "orgs" in json.loads(out)

    (project / ".tenantflow" / "secrets.json").unlink()
    code, out, err = await run_script(project / "starter.py", elsewhere, env, "--api-url", cli.url, "orgs")
    assert code == 2 and out == ""
    assert err == (
        "set TENANTFLOW_PROVISION_SECRET, or start the local stack (python -m devstack), "
        f"which saves it in {project / '.tenantflow' / 'secrets.json'}\n"
    )


@pytest_asyncio.fixture
async def empty_api(own, settings, dev_env):  # noqa: F811
    """The API on a database of its own, with nothing in it yet."""
    client = TestClient(TestServer(create_app(own[0], temporal=dev_env.client)))
    await client.start_server()
    yield Cli(str(client.make_url("/")).rstrip("/"), settings.provision_secret.get_secret_value())
    await client.close()


async def test_empty_lists_say_so(empty_api):
    cli = empty_api
    for argv, empty in (
        (["orgs"], "no orgs\n"),
        (["orgs", "--prefix", "zz"], "no orgs match\n"),
        (["teardowns"], "no teardowns\n"),
        (["operator-token", "list"], "no operator tokens\n"),
    ):
        assert await cli(*argv) == (0, empty, "")
    assert await cli.json("teardowns") == (0, {"teardowns": []})
    assert await cli.json("orgs") == (0, {"orgs": []})


def every_action(parser) -> list:
    actions = []
    for action in parser._actions:
        if hasattr(action, "choices") and isinstance(action.choices, dict):  # subcommands
            for sub in action.choices.values():
                actions += every_action(sub)
        else:
            actions.append((parser.prog, action))
    return actions


def test_every_option_is_described_with_its_choices_and_default():
    actions = every_action(starter._parser())
    undescribed = [f"{prog} {a.dest}" for prog, a in actions if not a.help]
    assert undescribed == []
    assert {"--json"} <= {o for _, a in actions for o in a.option_strings}
    assert sum("--json" in a.option_strings for _, a in actions) >= 20  # every command
    text = io.StringIO()
    starter._parser()._subparsers._group_actions[0].choices["onboard"].print_help(text)  # type: ignore[union-attr]
    assert "{free,starter,pro,enterprise}" in text.getvalue() and "(default: pro)" in text.getvalue()
    text = io.StringIO()
    ws = starter._parser()._subparsers._group_actions[0].choices["workspace"]  # type: ignore[union-attr]
    ws._subparsers._group_actions[0].choices["create"].print_help(text)
    assert (
        "{1,2,3,4}" in text.getvalue() and "(default: 2)" in text.getvalue() and "(default: hermes)" in text.getvalue()
    )


@pytest.mark.parametrize(
    ("command", "message", "translated"),
    [
        (
            "delete",
            'org has 2 workspace(s): send "delete_workspaces": true to terminate them with the org',
            "org has 2 workspace(s): pass --delete-workspaces to terminate them with the org",
        ),
        (
            "delete",
            '"confirm" must equal the slug "acme" to delete it',
            '--confirm must equal the slug "acme" to delete it',
        ),
        (
            "quota",
            "give at least one of max_workspaces, max_tier, billing_plan",
            "give at least one of --max-workspaces, --max-tier, --billing-plan",
        ),
        ("orgs", "status must be among active, failed", "status must be among active, failed"),
    ],
)
def test_api_field_names_become_the_cli_flags(command, message, translated):
    assert starter.in_cli_words(message, command) == translated


class ScriptedOrg:
    """An org whose reads come from a script: a read from before the change cannot be made on
    demand against the real API (it records the new status before answering 202)."""

    def __init__(self, *reads: dict):
        self.reads = list(reads)

    def org(self, slug: str) -> dict:
        return self.reads.pop(0) if len(self.reads) > 1 else self.reads[0]


def test_a_read_from_before_the_change_is_neither_drawn_nor_final():
    stale = {"slug": "acme", "status": "failed", "failure_reason": "onboarding failed", "progress": None}
    moving = {"slug": "acme", "status": "deleting", "failure_reason": None, "progress": None}
    gone = {"slug": "acme", "status": "deleted", "receipt": {"resources": [], "workspaces": []}}
    out = io.StringIO()
    final = starter.follow_org(ScriptedOrg(stale, moving, gone), "acme", out, operation="delete")  # type: ignore[arg-type]
    assert final["status"] == "deleted"
    assert "failed" not in out.getvalue() and "deleting" in out.getvalue()
    # watch (no operation): the same failed record is a settled state.
    assert starter.follow_org(ScriptedOrg(stale), "acme", None)["status"] == "failed"  # type: ignore[arg-type]


class ScriptedWorkspace:
    """A workspace read before its deletion shows (as the API's GET can), then gone."""

    def __init__(self, *statuses: str):
        self.statuses = list(statuses)

    def workspace(self, workspace_id: str) -> dict:
        if not self.statuses:
            raise starter.ApiError(404, {"error": "no workspace"})
        return {"id": workspace_id, "status": self.statuses.pop(0), "progress": None}


def test_a_workspace_deletion_ends_when_it_is_gone_not_on_an_earlier_state():
    out = io.StringIO()
    workspace = starter.follow_workspace(
        ScriptedWorkspace("failed", "running", "deleting"),  # type: ignore[arg-type]
        "ws_0123456789ab",
        out,
        deleting=True,
    )
    assert workspace["status"] == "deleted" and starter.workspace_outcome(workspace, "delete") == "done"
    assert "failed" not in out.getvalue() and "running" not in out.getvalue() and "deleting" in out.getvalue()
