"""The API's answers tell the truth about the org and its workspaces (issue 17, "Truthful state"):
a parked operation's reason and id are on the org itself, an abandoned operation is a visible
state with who and why, a workspace deletion shows ``deleting`` from its 202, the purge receipt
records final states, suspending twice is refused with the first reason kept, and a quota below
current use says how far over it is. End to end with real servers (see tests/test_lifecycle.py)."""

from __future__ import annotations

import requests

from tests.test_lifecycle import (  # noqa: F401 - stack: the fixture
    WS,
    bearer,
    mint,
    onboarded,
    op,
    parked_delete,
    poll,
    stack,
    with_running_workspaces,
)


async def test_parked_and_abandoned_delete_are_visible(stack, network, neon_faults, neon_url):
    api, settings, _ = stack
    org, parked = await parked_delete(api, settings, network, neon_faults)
    slug = org["slug"]
    body = {"confirm": slug, "delete_workspaces": True}
    # The org itself, not only its progress, says why it waits and which operation that is.
    assert parked["failure_reason"] == parked["progress"]["failure_reason"]
    assert "NeonAccessDenied" in parked["failure_reason"]
    assert parked["workflow_id"] == f"org-delete:{org['id']}" and parked["operation"] == "delete"
    assert parked["abandoned"] is None
    teardown = await _teardown(api, settings, slug)
    assert teardown["state"] == "parked" and teardown["failure_reason"] == parked["failure_reason"]

    await poll(
        api, f"/cp/orgs/{slug}/teardown/abandon", op(settings), lambda b: b.get("decision") == "abandon", method="POST"
    )
    stopped = await poll(api, f"/cp/orgs/{slug}", op(settings), lambda o: o["abandoned"])
    abandoned = stopped["abandoned"]
    assert stopped["status"] == "deleting" and stopped["operation"] is None
    assert abandoned["operation"] == "delete" and abandoned["step"] == "delete_database"
    assert abandoned["by"] == "operator:bootstrap" and abandoned["at"]
    assert "NeonAccessDenied" in abandoned["reason"]
    assert stopped["failure_reason"].startswith("abandoned by operator:bootstrap: delete_database")
    teardown = await _teardown(api, settings, slug)
    assert teardown["state"] == "abandoned" and teardown["abandoned"] == abandoned and not teardown["parked"]

    # A new delete is a new operation: nothing abandoned about it.
    requests.delete(f"{neon_url[0]}/__devstack/faults", timeout=5).raise_for_status()
    assert (await api.delete(f"/cp/orgs/{slug}", json=body, headers=op(settings))).status == 202
    again = await (await api.get(f"/cp/orgs/{slug}", headers=op(settings))).json()
    assert again["status"] == "deleted" or (again["abandoned"] is None and again["failure_reason"] is None)
    await poll(api, f"/cp/orgs/{slug}", op(settings), lambda o: o["status"] == "deleted")


async def _teardown(api, settings, slug: str) -> dict:
    teardowns = (await (await api.get("/cp/teardowns", headers=op(settings))).json())["teardowns"]
    return next(t for t in teardowns if t["slug"] == slug)


async def test_workspace_delete_and_receipt_show_final_states(stack, network):
    api, settings, _ = stack
    org, key, ids = await with_running_workspaces(stack, network, ("agent-a", "agent-b"))
    slug = org["slug"]

    # From its 202 on, the workspace reads as deleting (never running again), until it is gone.
    resp = await api.delete(f"/workspaces/{ids[0]}", headers=bearer(key))
    assert resp.status == 202 and (await resp.json())["status"] == "deleting"
    seen: list[str] = []

    def gone(r: dict) -> bool:
        seen.append(r.get("status") or r["code"])
        return r.get("code") == "WORKSPACE_NOT_FOUND"

    await poll(api, f"/workspaces/{ids[0]}", bearer(key), gone)
    assert seen[0] == "deleting" and "running" not in seen, seen

    # The org's cascade terminates the other one: its receipt says so, not "running".
    resp = await api.delete(f"/cp/orgs/{slug}", json={"confirm": slug, "delete_workspaces": True}, headers=op(settings))
    assert resp.status == 202
    done = await poll(api, f"/cp/orgs/{slug}", op(settings), lambda o: o["status"] == "deleted")
    by_id = {w["id"]: w for w in done["receipt"]["workspaces"]}
    assert by_id[ids[0]]["status"] == "deleted" and by_id[ids[0]]["status_before_purge"] == "deleted"
    assert by_id[ids[1]]["status"] == "deleted" and by_id[ids[1]]["status_before_purge"] == "running"
    assert all(r["status"] == "deleted" for r in done["receipt"]["resources"])


async def test_suspend_twice_keeps_the_first_reason(stack, network):
    api, settings, _ = stack
    org = await onboarded(api, settings, network)
    slug = org["slug"]
    resp = await api.post(f"/cp/orgs/{slug}/suspend", json={"reason": "unpaid invoice"}, headers=op(settings))
    assert resp.status == 202
    await poll(api, f"/cp/orgs/{slug}", op(settings), lambda o: o["status"] == "suspended")

    resp = await api.post(f"/cp/orgs/{slug}/suspend", json={"reason": "abuse report"}, headers=op(settings))
    body = await resp.json()
    assert resp.status == 409 and body["code"] == "ORG_ALREADY_SUSPENDED", body
    assert "unpaid invoice" in body["error"] and "resume" in body["error"]
    after = await (await api.get(f"/cp/orgs/{slug}", headers=op(settings))).json()
    assert after["status"] == "suspended" and after["status_reason"] == "unpaid invoice"


async def test_quota_below_current_use_says_how_far_over(stack, network):
    api, settings, boot_for = stack
    org = await onboarded(api, settings, network)
    slug = org["slug"]
    boot_for(org["id"])
    key = await mint(api, settings, slug)
    for name in ("agent-a", "agent-b", "agent-c"):
        assert (await api.post("/workspaces", json={**WS, "name": name}, headers=bearer(key))).status == 202

    resp = await api.patch(f"/cp/orgs/{slug}", json={"max_workspaces": 1}, headers=op(settings))
    body = await resp.json()
    assert resp.status == 200 and body["max_workspaces"] == 1
    over = body["over_quota"]
    assert (over["in_use"], over["max_workspaces"], over["over"]) == (3, 1, 2)
    assert "keep running" in over["meaning"] and "no workspace can be created" in over["meaning"]
    # ... and that is what happens.
    resp = await api.post("/workspaces", json={**WS, "name": "agent-d"}, headers=bearer(key))
    assert resp.status == 409 and (await resp.json())["code"] == "QUOTA_EXCEEDED"

    # A quota that fits says nothing of the kind.
    body = await (await api.patch(f"/cp/orgs/{slug}", json={"max_workspaces": 5}, headers=op(settings))).json()
    assert body["over_quota"] is None
