"""README stays true: the settings table is the model's, the top commands are CI's."""

from __future__ import annotations

import re
from pathlib import Path

from pgwake.endpoint.states import state_diagram
from pgwake.settings import settings_table

ROOT = Path(__file__).resolve().parent.parent
THIS = Path(__file__).resolve()


def test_readme_settings_table_matches_the_model() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- settings-table")
    start = readme.index("\n", start) + 1
    end = readme.index("<!-- /settings-table -->")
    assert readme[start:end].strip() == settings_table(), (
        "README's settings table is stale; replace it with:\n" + settings_table()
    )


def test_readme_state_diagram_matches_the_transition_table() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("```mermaid", readme.index("<!-- state-diagram")) + len("```mermaid")
    end = readme.index("```", start)
    assert readme[start:end].strip() == state_diagram()


def test_ci_runs_the_readme_test_command() -> None:
    """The command under README's "Install and run the tests" is what .ci/run runs last."""
    readme = (ROOT / "README.md").read_text()
    top = readme[readme.index("```sh") : readme.index("```", readme.index("```sh") + 5)]
    lines = top.splitlines()
    command = lines[lines.index("# Install and run the tests:") + 1]
    assert "pytest" in command
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line]
    assert ci_lines[-1] == command


def test_the_repository_cites_nothing_a_reader_cannot_open() -> None:
    """Docs, code, bench and deploy files name no issue numbers and no design document
    outside the repository: ARCHITECTURE.md is the map a reader has."""
    citation = re.compile(r"\b[Ii]ssue [0-9]+|design\.md|design §")
    roots = [ROOT / name for name in ("README.md", "ARCHITECTURE.md", "CHANGELOG.md")]
    roots += [ROOT / name for name in ("proxy", "bench", "deploy", "tests")]
    offenders = []
    for root in roots:
        files = [root] if root.is_file() else sorted(root.rglob("*"))
        for path in files:
            if path.suffix not in (".md", ".py", ".sh", ".json", ".toml") or path == THIS:
                continue
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if citation.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []
