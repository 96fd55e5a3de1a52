"""README stays true: the settings table is the model's, the top commands are CI's."""

from __future__ import annotations

from pathlib import Path

from proxy.lifecycle import state_diagram
from proxy.settings import settings_table

ROOT = Path(__file__).resolve().parent.parent


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
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = "pip install -q -e '.[test]' && python3 -m pytest"
    assert command in readme
    assert command in ci.splitlines()
