"""The layout is the architecture: thin stage entry points, a library that never imports them, exact DVC deps."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.layout import PROJECT_ROOT, closure_files, direct_dependencies, module_path

STAGES = ("prepare", "split", "train", "evaluate", "export")
LIBRARY = "image_classification"


def stage_deps(stage: str) -> list[str]:
    pipeline = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())
    return [dep for dep in pipeline["stages"][stage]["deps"] if dep.startswith((f"{LIBRARY}/", "stages/"))]


def python_modules(folder: str) -> list[str]:
    root = PROJECT_ROOT / folder
    return sorted(
        ".".join(path.relative_to(PROJECT_ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in root.rglob("*.py")
    )


@pytest.mark.parametrize("stage", STAGES)
def test_dvc_deps_are_exactly_the_modules_the_stage_imports(stage: str) -> None:
    imported = closure_files(f"stages.{stage}")
    listed_files, listed_folders = set(), set()
    for dep in stage_deps(stage):
        (listed_folders if (PROJECT_ROOT / dep).is_dir() else listed_files).add(dep)
    covered = set(listed_files)
    for folder in listed_folders:
        inside = {path.relative_to(PROJECT_ROOT).as_posix() for path in (PROJECT_ROOT / folder).rglob("*.py")}
        assert inside <= imported, f"{stage}: dvc.yaml lists {folder}/ but the stage imports only part of it"
        covered |= inside
    assert sorted(covered - imported) == [], f"{stage}: dvc.yaml lists modules the stage does not import"
    assert sorted(imported - covered) == [], f"{stage}: the stage imports modules dvc.yaml does not list"


def test_closure_follows_function_level_imports_and_modules_run_by_name() -> None:
    prepare = closure_files("stages.prepare")
    # sources.py runs keras_fetch in a child process, by module name.
    assert "image_classification/data/keras_fetch.py" in prepare
    # predict imports the SavedModel code inside its function, after the inputs are checked.
    assert "image_classification/serving/savedmodel.py" in closure_files("image_classification.serving.predict")
    assert module_path("keras") is None


def test_no_module_imports_a_stage_entry_point() -> None:
    offenders = []
    for folder in (LIBRARY, "stages", "benchmarks", "tests"):
        for module in python_modules(folder):
            offenders += [
                f"{module} imports {dependency}"
                for dependency in direct_dependencies(module)
                if dependency.startswith("stages.") and not _names_it_only_in_a_string(module, dependency)
            ]
    assert offenders == []


def _names_it_only_in_a_string(module: str, dependency: str) -> bool:
    """Tests and the benchmark run stages as commands (`python -m stages.train`), which is not an import."""
    tree = ast.parse(module_path(module).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(alias.name == dependency for alias in node.names):
            return False
        if isinstance(node, ast.ImportFrom) and (
            node.module == dependency
            or (node.module == "stages" and any(f"stages.{alias.name}" == dependency for alias in node.names))
        ):
            return False
    return True


def test_stage_entry_points_only_parse_arguments_and_call_the_library() -> None:
    # `backend` chooses the Keras backend before the stage imports its library function, inside `main`;
    # `launch` runs the processes of a multi-process training, before any backend is chosen;
    # `parity` starts export's check process before that stage imports TensorFlow.
    shared = {"runner", "load_params", "SPLITS", "backend", "launch", "parity"}
    for stage in STAGES:
        tree = ast.parse((PROJECT_ROOT / "stages" / f"{stage}.py").read_text())
        definitions = [node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.ClassDef)]
        assert definitions == ["main"], f"stages/{stage}.py defines {definitions}; library code belongs in {LIBRARY}/"
        imported = {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(LIBRARY)
            for alias in node.names
        }
        work = imported - shared
        assert len(work) == 1, f"stages/{stage}.py imports {sorted(work)} from the library; expected one function"
        called = {
            node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        }
        assert work <= called


def test_data_stages_do_not_import_tensorflow() -> None:
    code = "import sys, stages.prepare, stages.split; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False False"


def test_every_library_module_has_a_test_file() -> None:
    # Constants-only modules and the MLflow model file (tested through the registry) need none of their own.
    exempt = {"image_classification.serving.contract", "image_classification.serving.pyfunc_model"}
    missing = []
    for module in python_modules(LIBRARY):
        parts = module.split(".")[1:]
        if not parts or parts[-1] == "" or module in exempt or module_path(module).name == "__init__.py":
            continue
        test = PROJECT_ROOT / "tests" / Path(*parts[:-1]) / f"test_{parts[-1]}.py"
        if not test.is_file():
            missing.append(f"{module}: {test.relative_to(PROJECT_ROOT)}")
    assert missing == []
