"""The layers, checked from the source (parsed with ``ast``; nothing is imported or run).

    domain  <-  db  <-  activities  <-  workflows  <-  api, worker, starter

A module imports only from its own layer and the layers below it; the three entry points on top
import nothing of each other. Nothing in production imports the local stack, the tools, the
benchmarks, the tests or the agent (which runs on the workspace instances, not in the platform).
docs/architecture.md explains what lives where.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"domain": 0, "db": 1, "activities": 2, "workflows": 3, "api": 4, "worker": 4, "starter": 4}
NEVER_IN_PRODUCTION = {"devstack", "tools", "bench", "tests", "agent"}


def production_files() -> list[Path]:
    packages = [path for name in LAYERS if (path := ROOT / name).is_dir()]
    return sorted(f for package in packages for f in package.rglob("*.py")) + [
        ROOT / f"{name}.py" for name in LAYERS if (ROOT / f"{name}.py").is_file()
    ]


def layer_of(path: Path) -> str:
    return path.relative_to(ROOT).parts[0].removesuffix(".py")


def imported_modules(source: str) -> list[tuple[int, str]]:
    """Every absolute import of the source (inside functions too), with its line."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def violations(layer: str, source: str, where: str) -> list[str]:
    """The imports of a module of ``layer`` that the layering forbids."""
    problems = []
    for line, module in imported_modules(source):
        top = module.split(".")[0]
        if top in NEVER_IN_PRODUCTION:
            problems.append(f"{where}:{line} imports {module}: production never imports {top}")
        elif top in LAYERS and top != layer and LAYERS[top] >= LAYERS[layer]:
            problems.append(f"{where}:{line} imports {module}: {layer} may not import {top}")
    return problems


def test_the_layers_are_all_there():
    assert {layer_of(f) for f in production_files()} == set(LAYERS)


@pytest.mark.parametrize("path", production_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_a_layer_above_its_own(path: Path):
    assert violations(layer_of(path), path.read_text(), str(path.relative_to(ROOT))) == []


@pytest.mark.parametrize(
    ("layer", "source"),
    [
        ("domain", "from workflows.reconcile import ReconcileWorkflowV2"),
        ("domain", "def f():\n    from activities.reconcile import ReconcileActivities\n"),
        ("db", "import activities.ec2"),
        ("activities", "from workflows.common import run_activity"),
        ("workflows", "from api.commands import send_command"),
        ("api", "from worker import WORKFLOWS"),
        ("worker", "from devstack.stack import LocalStack"),
        ("api", "from tools.soak import StackHarness"),
    ],
)
def test_an_upward_import_is_caught(layer: str, source: str):
    """The guard itself works, for imports at module level and inside functions."""
    assert violations(layer, source, "example.py")


def test_downward_and_same_layer_imports_pass():
    downward = "from activities.ec2 import Ec2Activities\nfrom workflows.common import run_activity"
    assert violations("workflows", downward, "x") == []
    assert violations("api", "from workflows.org import OrgWorkflow\nfrom domain.operations import Start", "x") == []
