"""The tree reads as the data path: every project import goes down the layers of
docs/architecture.md, never up (function-level imports included), and that document names
every module."""
from __future__ import annotations

import ast
import re

from core.config import PROJECT_ROOT

# Bottom to top; a module may import its own layer and the ones below it.
LAYERS = ("core", "training", "feature_repo", "vector_index", "operators", "ensemble",
          "recsys.runtime", "recsys.jobs", "recsys", "benchmarks")


def _layer(module: str) -> int | None:
    matches = [i for i, layer in enumerate(LAYERS) if module == layer or module.startswith(layer + ".")]
    return max(matches) if matches else None


def _modules():
    for layer in ("core", "training", "feature_repo", "vector_index", "operators", "ensemble", "recsys", "benchmarks"):
        for path in sorted((PROJECT_ROOT / layer).rglob("*.py")):
            yield ".".join(path.relative_to(PROJECT_ROOT).with_suffix("").parts), path


def test_imports_go_down_the_layers_only():
    upward = []
    for module, path in _modules():
        own = _layer(module)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                target = _layer(name)
                if target is not None and target > own and not (module.startswith("recsys.")
                                                                 and name == "recsys"):
                    upward.append(f"{module}:{node.lineno} imports {name} ({LAYERS[own]} -> {LAYERS[target]})")
    assert not upward, "\n".join(upward)


def test_the_architecture_document_names_every_module():
    text = (PROJECT_ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`([\w/]+\.py)`", text))
    missing = [str(path.relative_to(PROJECT_ROOT)) for _, path in _modules()
               if path.name != "__init__.py" and str(path.relative_to(PROJECT_ROOT)) not in named]
    assert not missing, f"docs/architecture.md does not describe {missing}"
