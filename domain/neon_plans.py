"""What each Neon plan allows: projects per account, branches per project (included, and the cap).

The one table of these numbers, read by the product (branch mode refuses a branch beyond the cap and
warns about billed extras) and by the local Neon server, which enforces the same caps.

Sources:
- https://neon.com/docs/introduction/plans (Free, Launch, Scale): Free and Launch include 10
  branches per project, Scale 25; the Free plan has no extra branches, so 10 is its cap; on Launch and
  Scale extra branches are billed per branch-month up to 5,000 per project. Projects: 100 on Free and
  Launch, 1,000 on Scale (a soft limit Neon support raises on request).
- https://neon.com/docs/introduction/legacy-plans (Business, legacy): 5,000 projects and 5,000
  branches per project, all included.
Neon counts every branch of a project, the default (root) branch too, against these numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

NeonPlan = Literal["free", "launch", "scale", "business"]

PLANS_URL = "https://neon.com/docs/introduction/plans"
EXTRA_BRANCH_MONTHLY_USD = 1.50


@dataclass(frozen=True)
class PlanLimits:
    projects: int
    included_branches: int  # per project, the default branch counted
    max_branches: int  # per project: the hard cap

    def branch_is_billed(self, branch_number: int) -> bool:
        """Whether the ``branch_number``-th branch of a project (1-based) is an extra, billed one."""
        return branch_number > self.included_branches


PLANS: dict[str, PlanLimits] = {
    "free": PlanLimits(projects=100, included_branches=10, max_branches=10),
    "launch": PlanLimits(projects=100, included_branches=10, max_branches=5000),
    "scale": PlanLimits(projects=1000, included_branches=25, max_branches=5000),
    "business": PlanLimits(projects=5000, included_branches=5000, max_branches=5000),
}
