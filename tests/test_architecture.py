"""The library's shape: pipeline/ never imports snakemake, and no module imports a command module
(one with a `__main__` block: train, evaluate, join_captions, ...) for a utility; every method is
one registry entry."""
import ast
import re
from pathlib import Path

import pytest

from pipeline import methods
from pipeline.config import ConfigError, load_config, load_schema, resolve_run
from pipeline.methods import METHODS, Method
from pipeline.models import kinds
from pipeline.models.build import build_model
from pipeline.models.gru_encoder import GRUUserEncoder
from pipeline.models.item_encoder import IISANItemEncoder

PIPELINE = Path(__file__).resolve().parent.parent / "pipeline"


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def is_command(path: Path) -> bool:
    """Runs as `python -m`: a top-level `if __name__ == "__main__":` block."""
    return any(isinstance(node, ast.If) and ast.unparse(node.test) == "__name__ == '__main__'"
               for node in ast.parse(path.read_text()).body)


def module_name(path: Path) -> str:
    parts = path.relative_to(PIPELINE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(PIPELINE.rglob("*.py"))
# Command lines (stages and tools) with their own arguments and side effects: what another module
# needs from one lives in a library module both import (e.g. pipeline/item_table.py), never in it.
COMMANDS = {module_name(p) for p in MODULES if is_command(p)}


def test_the_command_modules_are_found():
    assert {"pipeline.train", "pipeline.join_captions", "pipeline.significance", "pipeline.synth"} <= COMMANDS
    assert "pipeline.item_table" not in COMMANDS
    rules = "\n".join(p.read_text() for p in (PIPELINE.parent / "workflow").rglob("*.smk"))
    assert set(re.findall(r"python -m (pipeline\.[\w.]+)", rules)) <= COMMANDS, "the rules run a module without main"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PIPELINE)))
def test_library_module_imports(path):
    found = imports(path)
    assert not {m for m in found if m == "snakemake" or m.startswith("snakemake.")}, "pipeline/ never imports snakemake"
    assert not found & COMMANDS, f"imports a command module: {sorted(found & COMMANDS)}"


def test_the_schema_lists_exactly_the_registered_methods():
    method = load_schema()["$defs"]["run"]["properties"]["method"]
    assert method["enum"] == list(METHODS)
    assert all(name in method["description"] for name in METHODS)


def test_every_encoder_kind_of_the_registry_has_its_class():
    assert set(kinds.ITEM_ENCODER_CLASSES) == set(methods.ITEM_ENCODERS)
    assert set(kinds.USER_ENCODER_CLASSES) == set(methods.USER_ENCODERS)


def test_a_new_method_is_one_registry_entry(monkeypatch):
    """A method reusing existing modules (IISAN items, a GRU user): one METHODS entry, and the
    schema, config validation (its IISAN item encoder can be ablated) and model building know it."""
    monkeypatch.setitem(METHODS, "iisan-gru", Method("IISAN item encoder, GRU user encoder", "iisan", "gru"))

    def config(method: str) -> dict:
        return load_config({
            "datasets": {"d": {"format": "iisan-split", "users": "u", "items": "i"}},
            "encoders": {"t": {"path": "x", "modality": "text", "layers": 4, "hidden_size": 16},
                         "v": {"path": "y", "modality": "image", "layers": 2, "hidden_size": 8}},
            "runs": {"r": {"method": method, "text": "t", "image": "v", "ablate": ["gate"]}}})

    assert "iisan-gru" in load_schema()["$defs"]["run"]["properties"]["method"]["enum"]
    model = build_model(resolve_run(config("iisan-gru"), "d", "r"), num_items=5)
    assert isinstance(model.item_encoder, IISANItemEncoder) and isinstance(model.user_encoder, GRUUserEncoder)
    assert not [n for n, _ in model.named_parameters() if "gates" in n]  # ablate: gate
    assert config("iisan-uncached")["runs"]["r"]["ablate"] == ["gate"]  # the same item encoder
    with pytest.raises(ConfigError, match=r"ablations remove parts of the IISAN item encoder \(methods iisan, "
                                          r"iisan-uncached, iisan-gru\)"):
        config("frozen")


def test_a_method_names_known_encoder_kinds():
    with pytest.raises(ValueError, match="unknown encoder kind"):
        Method("a typo", "iisan", "sasrek")
    with pytest.raises(ValueError, match="names both an item and a user encoder"):
        Method("no user encoder", "iisan")
