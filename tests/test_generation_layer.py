"""The direction of the layers around generation: models import nothing above them, generation
imports no job or command module (docs: DESIGN's layer table)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JOBS = ("jrt_prompt.run", "jrt_prompt.scoring", "jrt_prompt.evaluation", "jrt_prompt.bench", "jrt_cli", "cli")


def _imports(path: Path, package: str) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.add(module)
            out.update(f"{module}.{alias.name}" for alias in node.names)
    return out


def _modules(folder: str):
    """(path, dotted module name) of every module under ``folder``; a package's ``__init__`` is
    named ``<package>.__init__`` so that relative imports resolve from the package itself."""
    for path in sorted((ROOT / folder).rglob("*.py")):
        yield path, ".".join(path.relative_to(ROOT).with_suffix("").parts)


def test_models_import_nothing_above_them():
    above = ("jrt_prompt.generation", "jrt_prompt.prompts", "jrt_prompt.tasks", *JOBS)
    for path, package in _modules("jrt_prompt/models"):
        bad = sorted(m for m in _imports(path, package) if m.startswith(above))
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_generation_imports_no_job_or_command():
    for path, package in _modules("jrt_prompt/generation"):
        bad = sorted(m for m in _imports(path, package) if m.startswith(JOBS))
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_generation_imports_no_prompt_or_task_module():
    above = ("jrt_prompt.prompts", "jrt_prompt.tasks")
    for path, package in _modules("jrt_prompt/generation"):
        bad = sorted(m for m in _imports(path, package) if m.startswith(above))
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
