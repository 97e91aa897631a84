"""The project's own modules a stage runs: its import closure, read from the source with `ast`.

Used by the layout tests to check that `dvc.yaml` lists exactly the modules each stage imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("image_classification", "stages", "benchmarks", "tests")


def module_path(name: str) -> Path | None:
    """The file of project module `name`, or None when it is not one of the project's."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = PROJECT_ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def direct_dependencies(name: str) -> set[str]:
    """Project modules that `name` imports anywhere in its file (function-level imports too), plus
    modules it names in a string constant: the ones it runs in a child process or hands to MLflow."""
    path = module_path(name)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.add(node.value)
    return {module for module in found if module_path(module) is not None and module != name}


def closure(name: str) -> set[str]:
    """`name` and every project module it reaches, with the packages (`__init__.py`) Python runs on the way."""
    seen: set[str] = set()
    pending = [name]
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        pending += [".".join(parts[:depth]) for depth in range(1, len(parts))]
        pending += direct_dependencies(module)
    return seen


def closure_files(name: str) -> set[str]:
    """The files of `closure(name)`, relative to the project root, POSIX style."""
    return {module_path(module).relative_to(PROJECT_ROOT).as_posix() for module in closure(name)}
