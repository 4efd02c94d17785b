"""Plan caps: branches per project and projects per account, as Neon enforces them.

The numbers are the product's own table (``domain/neon_plans.py``, from
https://neon.com/docs/introduction/plans). Every branch counts, the default one too; a Free project
stops at 10 branches, a paid one at 5,000 (branches beyond the included number are created and
billed as extras; the server logs each one).

Above a cap Neon answers 422 with a machine-readable code, e.g.
``{"code": "BRANCHES_LIMIT_EXCEEDED", "message": ...}`` and
``{"code": "PROJECTS_LIMIT_EXCEEDED", "message": "projects limit exceeded"}``
(the codes are Neon's ErrorCode values; the status and the projects message as captured from the
real API by third-party clients, e.g. https://github.com/jdrumgoole/pyneoncli).
"""

from __future__ import annotations

from devstack.neon.devtools import ApiError
from domain.neon_plans import PLANS, PlanLimits

BRANCHES_LIMIT_EXCEEDED = "BRANCHES_LIMIT_EXCEEDED"
PROJECTS_LIMIT_EXCEEDED = "PROJECTS_LIMIT_EXCEEDED"


def limits(plan: str) -> PlanLimits:
    return PLANS[plan]


def check_new_branch(plan: str, existing: int) -> bool:
    """Refuse a branch beyond the plan's cap; True when the new one is a billed extra."""
    cap = limits(plan)
    if existing >= cap.max_branches:
        raise ApiError(
            422,
            f"branches limit exceeded: the {plan} plan allows {cap.max_branches} branches per project",
            code=BRANCHES_LIMIT_EXCEEDED,
        )
    return cap.branch_is_billed(existing + 1)


def check_new_project(plan: str, existing: int) -> None:
    cap = limits(plan)
    if existing >= cap.projects:
        raise ApiError(422, "projects limit exceeded", code=PROJECTS_LIMIT_EXCEEDED)
