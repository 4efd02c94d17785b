"""Reading the documents as a test reads them: the command blocks, the sample outputs and the API
table of README.md and docs/operator-runbook.md, and the mechanical rule that fills their
placeholders (tests/test_docs.py runs them)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RUNBOOK = ROOT / "docs" / "operator-runbook.md"

# The local servers' documented default ports; a test stack listens elsewhere.
DEFAULT_PORTS = {8080: "API_PORT", 7233: "TEMPORAL_PORT", 8233: "TEMPORAL_UI_PORT", 5055: "MOTO_PORT"}


@dataclass(frozen=True)
class DocCommand:
    source: str  # file name and line
    text: str  # the command as written: continuation lines joined, comments dropped

    def __str__(self) -> str:
        return f"{self.source}: {self.text}"


def _strip_comment(line: str) -> str:
    """The line up to a shell comment (`#` at the start of a word, outside quotes)."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def fenced_blocks(path: Path, language: str) -> list[tuple[int, str]]:
    """(first line number, body) of every ```<language> block ("" for a plain ``` block)."""
    found, lines = [], path.read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("```"):
            lang, start = lines[i][3:].strip(), i + 1
            i += 1
            while not lines[i].startswith("```"):
                i += 1
            if lang == language:
                found.append((start + 1, "\n".join(lines[start:i])))
        i += 1
    return found


def commands(path: Path) -> list[DocCommand]:
    """Every command of every bash block, in document order."""
    out: list[DocCommand] = []
    for first_line, body in fenced_blocks(path, "bash"):
        pending: list[str] = []
        for offset, raw in enumerate(body.splitlines()):
            code = _strip_comment(raw).rstrip()
            if code.endswith("\\"):
                pending.append(code[:-1].strip())
                continue
            text = " ".join([*pending, code.strip()]).strip()
            line = first_line + offset - len(pending)
            pending = []
            if text:
                out.append(DocCommand(f"{path.relative_to(ROOT)}:{line}", re.sub(r"\s+", " ", text)))
    return out


def sample_output(path: Path, first_line_startswith: str) -> list[str]:
    """The lines of the plain ``` block whose first line starts with the given text."""
    for _, body in fenced_blocks(path, ""):
        if body.startswith(first_line_startswith):
            return body.splitlines()
    raise LookupError(f"no sample output starting with {first_line_startswith!r} in {path}")


def matches_sample(sample_line: str, output_line: str) -> bool:
    """`...` in a sample stands for any text; everything else must be as printed."""
    pattern = ".*".join(re.escape(part) for part in sample_line.split("..."))
    return re.fullmatch(pattern, output_line.rstrip()) is not None


def fill(text: str, values: dict[str, str], ports: dict[str, int]) -> str:
    """The command with its placeholders filled: documented default ports become the stack's,
    then each placeholder (the keys of ``values``, longest first) its value."""
    for default, name in DEFAULT_PORTS.items():
        text = text.replace(f"127.0.0.1:{default}", f"127.0.0.1:{ports[name]}")
    for placeholder in sorted(values, key=len, reverse=True):
        text = text.replace(placeholder, values[placeholder])
    return text


def api_table_rows(path: Path = README) -> list[tuple[str, str]]:
    """(request, answer) for every row of the README's API table (the table headed `| request |
    answer |`)."""
    lines = path.read_text().splitlines()
    start = lines.index("| request | answer |") + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        request, answer = (c.strip() for c in line.strip().strip("|").split(" | ", 1))
        rows.append((request, answer))
    return rows
