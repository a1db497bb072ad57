"""Import contracts: core imports no project package; training only core; indexer only core;
service and benchmarks never training (and not each other)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "training", "indexer", "service", "benchmarks")
ALLOWED = {
    "core": set(),
    "training": {"core"},
    "indexer": {"core"},
    "service": {"core", "indexer"},
    "benchmarks": {"core", "indexer"},
}


def project_imports(package: str) -> list[tuple[str, str]]:
    """(file, imported top-level project package) for every import in ``package``."""
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in PACKAGES and top != package:
                    found.append((str(path.relative_to(ROOT)), top))
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_what_it_may(package: str) -> None:
    assert (ROOT / package / "__init__.py").is_file()
    violations = [(f, t) for f, t in project_imports(package) if t not in ALLOWED[package]]
    assert violations == [], f"{package} may import only {sorted(ALLOWED[package])}: {violations}"


def test_checker_sees_real_imports() -> None:
    # guards the checker itself: training does import core
    assert ("training/trainer.py", "core") in project_imports("training")
