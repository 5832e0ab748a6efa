"""The package's shape: no import cycle, Ray only in pipeline/runtime, pure features and models."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1] / "pipeline"


def _imports() -> dict[str, set[str]]:
    """Every pipeline module -> the modules it imports (at the top, inside functions, or by
    name through importlib)."""
    files = {".".join(f.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__"): f
             for f in ROOT.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module"
                  and node.args and isinstance(node.args[0], ast.Constant)):
                found.add(node.args[0].value)
        graph[name] = {m for m in found if m != name and (m in files or not m.startswith("pipeline"))}
    return graph


def test_no_import_cycle():
    graph = _imports()
    done, path = set(), []

    def visit(module):
        assert module not in path, " -> ".join(path[path.index(module):] + [module])
        if module in done or module not in graph:
            return
        path.append(module)
        for target in graph[module]:
            visit(target)
        path.pop()
        done.add(module)

    for module in graph:
        visit(module)


def test_ray_only_in_runtime_and_features_and_models_pure():
    for module, targets in _imports().items():
        if not module.startswith("pipeline.runtime"):
            assert not any(t == "ray" or t.startswith("ray.") for t in targets), module
        if module.startswith(("pipeline.features", "pipeline.models")):
            assert not any(t.startswith(("pipeline.storage", "pipeline.runtime"))
                           for t in targets), module
