"""The library's shape: pipeline/ never imports snakemake, and no module imports a stage's
command module (train, evaluate, ...) for a utility; every method is one registry entry."""
import ast
from pathlib import Path

import pytest

from pipeline.config import load_schema
from pipeline.methods import METHODS

PIPELINE = Path(__file__).resolve().parent.parent / "pipeline"
# Stage entry points: command lines with their own side effects, never a library for another module.
STAGE_COMMANDS = {"pipeline.train", "pipeline.evaluate", "pipeline.recommend", "pipeline.efficiency"}


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


MODULES = sorted(PIPELINE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PIPELINE)))
def test_library_module_imports(path):
    found = imports(path)
    assert not {m for m in found if m == "snakemake" or m.startswith("snakemake.")}, "pipeline/ never imports snakemake"
    assert not found & STAGE_COMMANDS, f"imports a stage's command module: {sorted(found & STAGE_COMMANDS)}"


def test_the_schema_lists_exactly_the_registered_methods():
    method = load_schema()["$defs"]["run"]["properties"]["method"]
    assert method["enum"] == list(METHODS)
    assert all(name in method["description"] for name in METHODS)
