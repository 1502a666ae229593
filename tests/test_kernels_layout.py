"""The kernels layer's import rules: it imports nothing of jrt_prompt above it (only
jrt_prompt.errors), its modules import no circle, the shared Taylor folder imports neither op
family and Based does not import PLA, and importing the public ops does not import Triton."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ROOT / "jrt_prompt" / "kernels"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of the jrt_prompt modules (or packages) that one file imports."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:  # `from . import reference` imports a submodule
                sub = f"{target}.{alias.name}"
                sub_path = ROOT.joinpath(*sub.split("."))
                out.add(sub if sub_path.with_suffix(".py").exists() or sub_path.is_dir() else target)
    return {m for m in out if m == "jrt_prompt" or m.startswith("jrt_prompt.")}


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in sorted(KERNELS.rglob("*.py"))}


def test_kernels_import_only_errors_from_the_layers_above():
    for module, imports in _graph().items():
        outside = {m for m in imports if not m.startswith("jrt_prompt.kernels")} - {"jrt_prompt.errors"}
        assert not outside, f"{module} imports {sorted(outside)}: the kernels layer imports no layer above it"


def test_kernel_modules_import_no_circle():
    graph = _graph()
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]):
        assert module not in path, "import circle: " + " -> ".join(path + (module,))
        if module in done or module not in graph:
            return
        for target in graph[module]:
            visit(target, path + (module,))
        done.add(module)

    for module in graph:
        visit(module, ())


def test_shared_folder_imports_no_op_family_and_based_not_pla():
    for module, imports in _graph().items():
        if module.startswith("jrt_prompt.kernels.taylor"):
            families = {
                m for m in imports if m.startswith(("jrt_prompt.kernels.based", "jrt_prompt.kernels.pla"))
            }
            assert not families, f"{module} imports {sorted(families)}: taylor/ holds what the families share"
        if module.startswith("jrt_prompt.kernels.based"):
            assert not any(m.startswith("jrt_prompt.kernels.pla") for m in imports), module


def test_public_ops_import_without_triton():
    """Triton is imported when a kernel runs, so TRITON_INTERPRET may still be set after the ops
    are imported (the interpreter tests rely on it) and CPU use never loads Triton."""
    code = (
        "import sys; from jrt_prompt.kernels import based_linear_attention, prefix_linear_attention, "
        "linear_attention_step, LinearAttentionState, taylor_feature_map, backend_for; "
        "print('triton' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert run.stdout.strip() == "False"
