"""What paged list queries share."""

from __future__ import annotations


def contains(text: str) -> str:
    """An ILIKE pattern for a value containing ``text``, whose own ``%`` and ``_`` match only themselves."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"
