"""Identifiers shaped like Neon's, and the physical Postgres names behind them."""

from __future__ import annotations

import re
import secrets
import string
import uuid

_ADJECTIVES = (
    "autumn",
    "billowing",
    "bold",
    "broad",
    "calm",
    "cool",
    "crimson",
    "damp",
    "dawn",
    "divine",
    "empty",
    "fancy",
    "floral",
    "fragrant",
    "frosty",
    "gentle",
    "holy",
    "icy",
    "lively",
    "lucky",
    "misty",
    "morning",
    "muddy",
    "noisy",
    "old",
    "patient",
    "plain",
    "polished",
    "proud",
    "quiet",
    "rapid",
    "restless",
    "royal",
    "shy",
    "silent",
    "small",
    "snowy",
    "soft",
    "solitary",
    "spring",
    "still",
    "summer",
    "sweet",
    "tiny",
    "twilight",
    "wandering",
    "weathered",
    "white",
    "wild",
    "winter",
)
_NOUNS = (
    "bar",
    "base",
    "bird",
    "bonus",
    "breeze",
    "brook",
    "bush",
    "butterfly",
    "cake",
    "cell",
    "cherry",
    "cloud",
    "credit",
    "darkness",
    "dawn",
    "dew",
    "disk",
    "dream",
    "dust",
    "feather",
    "field",
    "fire",
    "firefly",
    "flower",
    "fog",
    "forest",
    "frog",
    "frost",
    "glade",
    "glitter",
    "grass",
    "hall",
    "hat",
    "haze",
    "heart",
    "hill",
    "lake",
    "leaf",
    "meadow",
    "moon",
    "morning",
    "mountain",
    "night",
    "paper",
    "pine",
    "pond",
    "rain",
    "recipe",
    "resonance",
    "river",
    "salad",
    "scene",
    "sea",
    "shadow",
    "shape",
    "silence",
    "sky",
    "smoke",
    "snow",
    "sound",
    "star",
    "sun",
    "sunset",
    "surf",
    "thunder",
    "tooth",
    "tree",
    "truth",
    "union",
    "unit",
    "violet",
    "voice",
    "water",
    "waterfall",
    "wave",
    "wildflower",
    "wind",
    "wood",
)
_ALNUM = string.ascii_lowercase + string.digits

# Caller-chosen ids (the seed project) must stay safe inside Postgres identifiers of <= 63 bytes.
PROJECT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
BRANCH_ID_RE = re.compile(r"^br-[a-z0-9-]{1,60}$")
ROLE_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,19}$")


def _words() -> str:
    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}"


def _suffix(length: int = 8) -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(length))


def project_id() -> str:
    return f"{_words()}-{secrets.randbelow(10**8):08d}"


def branch_id() -> str:
    return f"br-{_words()}-{_suffix()}"


def endpoint_id() -> str:
    return f"ep-{_words()}-{_suffix()}"


def operation_id() -> str:
    return str(uuid.uuid4())


def role_password() -> str:
    return "npg_" + secrets.token_urlsafe(12)


def _identifier_part(project: str) -> str:
    return project.replace("-", "_")


def physical_role(logical_role: str, project: str) -> str:
    """Roles are global to a Postgres cluster, so each project's role carries the project id."""
    return f"{logical_role}_{_identifier_part(project)}"


def physical_database(project: str, branch: str) -> str:
    return f"nb_{_identifier_part(project)}_{branch[-8:]}"


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
