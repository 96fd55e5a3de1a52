"""ARCHITECTURE.md stays true: every path and every ``module:attribute`` it names exists,
and the endpoint domain imports only what the module map allows."""

from __future__ import annotations

import ast
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


def _imported_packages(package: Path) -> dict[str, set[str]]:
    """For each module of ``package``: the pgwake packages it imports (``endpoint``,
    ``edge``...), type-only imports included."""
    found: dict[str, set[str]] = {}
    for path in sorted(package.rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            names |= {m.split(".")[1] for m in modules if m.startswith("pgwake.")}
        found[str(path.relative_to(ROOT))] = names
    return found


def test_the_endpoint_domain_imports_only_what_the_map_allows() -> None:
    """The ``proxy/endpoint/`` row: in particular never the edge (it tells the edge
    through a hook) and no protocol type (the edges map its errors)."""
    row = next(line for line in TEXT.splitlines() if line.startswith("| `proxy/endpoint/`"))
    allowed = set(re.findall(r"`(\w+)`", row.rsplit("|", 2)[1])) | {"endpoint"}
    assert "edge" not in allowed
    assert "protocol" not in allowed
    imports = _imported_packages(ROOT / "proxy" / "endpoint")
    assert {module: sorted(names - allowed) for module, names in imports.items()} == {
        module: [] for module in imports
    }
