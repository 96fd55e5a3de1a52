"""ARCHITECTURE.md stays true: every path and every ``module:attribute`` it names exists."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT = (ROOT / "ARCHITECTURE.md").read_text()


def test_every_path_named_exists() -> None:
    paths = set(re.findall(r"`(proxy/[\w/.]*)`", TEXT))
    assert len(paths) > 10
    missing = sorted(path for path in paths if not (ROOT / path).exists())
    assert missing == []


def test_every_module_and_attribute_named_exists() -> None:
    references = set(re.findall(r"`(pgwake(?:\.\w+)+):([\w.]+)`", TEXT))
    assert len(references) > 10
    missing = []
    for module_name, attribute_path in sorted(references):
        target: object = importlib.import_module(module_name)
        for attribute in attribute_path.split("."):
            if not hasattr(target, attribute):
                missing.append(f"{module_name}:{attribute_path}")
                break
            target = getattr(target, attribute)
    assert missing == []


def test_every_package_is_on_the_map() -> None:
    packages = sorted(
        f"proxy/{path.parent.relative_to(ROOT / 'proxy')}/"
        for path in (ROOT / "proxy").glob("*/__init__.py")
    )
    assert [package for package in packages if f"`{package}`" not in TEXT] == []
