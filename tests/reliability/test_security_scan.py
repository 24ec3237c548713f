"""Static scan for code that would run whatever a downloaded file or checkpoint contains.

Python files are read with the ast module. Snakemake files are not Python as a whole, so each
logical line is parsed on its own (as a statement, a compound-statement header, a directive
entry or a directive value); a line that parses none of these ways, other than a header of
bare words such as `rule name:`, fails the scan instead of being skipped."""
import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCANNED = ["pipeline", "bench", "workflow", "tests", "Snakefile"]
PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "shelve"}
UNSAFE_YAML = {"yaml.unsafe_load", "yaml.unsafe_load_all", "yaml.full_load", "yaml.full_load_all"}
NEVER_TRUE = ("shell", "trust_remote_code", "allow_pickle")  # keywords that must not be hard-coded True
SNAKEMAKE_HEADER = re.compile(r"\w+(\s+\w+)*:")  # `rule a:`, `use rule a as b with:`: no code in them


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _aliases(trees) -> dict[str, str]:
    """Local name -> dotted module path, from every import (`import torch as t`, `from torch import load`)."""
    names = {}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update({a.asname or a.name.split(".")[0]: a.name if a.asname else a.name.split(".")[0]
                              for a in node.names})
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
    return names


def _dotted(node, aliases) -> str:
    if isinstance(node, ast.Name):
        return aliases.get(node.id, node.id)
    if isinstance(node, ast.Attribute) and (base := _dotted(node.value, aliases)):
        return f"{base}.{node.attr}"
    return ""


def _call_problems(call: ast.Call, aliases) -> list[str]:
    name, keywords = _dotted(call.func, aliases), {k.arg: k.value for k in call.keywords if k.arg}
    problems = [f"{key}=True" for key in NEVER_TRUE if _is_true(keywords.get(key))]
    if name == "torch.load" and not _is_true(keywords.get("weights_only")):
        problems.append("torch.load without weights_only=True")
    if name in ("yaml.load", "yaml.load_all"):
        loader = keywords.get("Loader") or (call.args[1] if len(call.args) > 1 else None)
        if not _dotted(loader, aliases).endswith("SafeLoader"):
            problems.append(f"{name} without a SafeLoader")
    if name in UNSAFE_YAML:
        problems.append(name)
    if name in ("eval", "exec") and not all(isinstance(a, ast.Constant) for a in call.args):
        problems.append(f"{name} of a computed value")
    if name.rsplit(".", 1)[-1] == "read_pickle" or (
            name in ("__import__", "importlib.import_module") and call.args
            and isinstance(call.args[0], ast.Constant) and call.args[0].value in PICKLE_MODULES):
        problems.append(f"{name}: pickle")
    return problems


def problems_in(trees) -> list[tuple[int, str]]:
    """(line, what) of every finding in the parsed trees of one file."""
    aliases, found = _aliases(trees), []
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                found += [(node.lineno, f"imports {m}") for m in modules if m.split(".")[0] in PICKLE_MODULES]
            elif isinstance(node, ast.Call):
                found += [(node.lineno, p) for p in _call_problems(node, aliases)]
            elif isinstance(node, ast.Dict):
                found += [(node.lineno, "trust_remote_code: True") for k, v in zip(node.keys, node.values)
                          if isinstance(k, ast.Constant) and k.value == "trust_remote_code" and _is_true(v)]
    return found


def _logical_lines(source: str):
    """(first line number, text) of each logical line, comments and blank lines left out."""
    lines, first, last = source.splitlines(keepends=True), None, None
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in (tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            continue
        if token.type == tokenize.NEWLINE:
            (row, col), (end_row, end_col) = first.start, last.end
            text = "".join(lines[row - 1:end_row])
            yield row, text[col:len(text) - len(lines[end_row - 1]) + end_col]
            first = None
            continue
        first, last = first or token, token


def _parse_snakemake_line(text: str, row: int):
    """The line (starting at `row`) as a statement, a compound-statement header (`def f(x):`,
    `except E as e:`), a directive entry (`a="x",`) or a directive value (`shell: "..."`); None
    when it is none of them."""
    head, _, value = text.partition(":")
    candidates = [(text, 0), (text + " pass", 0), (f"f({text})", 0),
                  (f"try: pass\n{text} pass", 1), (f"if 1: pass\n{text} pass", 1)]
    if head.strip().isidentifier():
        candidates.append((f"f({value})", 0))
    for code, lines_before in candidates:
        try:
            return ast.increment_lineno(ast.parse(code), row - 1 - lines_before)
        except SyntaxError:
            continue
    return None


def scan_file(path: Path, root: Path = REPO) -> list[str]:
    source = path.read_text(encoding="utf-8")
    if path.suffix == ".py":
        trees, unread = [ast.parse(source, str(path))], []
    else:
        trees, unread = [], []
        for row, text in _logical_lines(source):
            if (tree := _parse_snakemake_line(text, row)) is not None:
                trees.append(tree)
            elif not SNAKEMAKE_HEADER.fullmatch(text.strip()):
                unread.append(f"{path.relative_to(root)}:{row}: could not parse for the scan: {text[:60]!r}")
    return unread + [f"{path.relative_to(root)}:{line}: {what}" for line, what in problems_in(trees)]


def scanned_files() -> list[Path]:
    files = []
    for name in SCANNED:
        root = REPO / name
        files += [root] if root.is_file() else sorted(
            p for pattern in ("*.py", "*.smk", "Snakefile") for p in root.rglob(pattern))
    return files


def test_repository_has_no_unsafe_loading_or_execution():
    files = scanned_files()
    assert len([f for f in files if f.suffix == ".smk"]) >= 5 and REPO / "pipeline" / "prepare.py" in files
    findings = [finding for f in files for finding in scan_file(f)]
    assert findings == []


@pytest.mark.parametrize("code,problem", [
    ("import torch\ntorch.load(path)", "torch.load without weights_only=True"),
    ("import torch as t\nt.load(path, weights_only=False)", "torch.load without weights_only=True"),
    ("from torch import load\nload(path)", "torch.load without weights_only=True"),
    ("import pickle", "imports pickle"),
    ("from pickle import loads", "imports pickle"),
    ("import cloudpickle as cp", "imports cloudpickle"),
    ("__import__('pickle')", "__import__: pickle"),
    ("import pandas as pd\npd.read_pickle(p)", "pandas.read_pickle: pickle"),
    ("import numpy as np\nnp.load(p, allow_pickle=True)", "allow_pickle=True"),
    ("import yaml\nyaml.load(text)", "yaml.load without a SafeLoader"),
    ("import yaml\nyaml.load(text, Loader=yaml.FullLoader)", "yaml.load without a SafeLoader"),
    ("import yaml\nyaml.unsafe_load(text)", "yaml.unsafe_load"),
    ("eval(line)", "eval of a computed value"),
    ("exec(open(p).read())", "exec of a computed value"),
    ("import subprocess\nsubprocess.run(cmd, shell=True)", "shell=True"),
    ("AutoModel.from_pretrained(p, trust_remote_code=True)", "trust_remote_code=True"),
    ("kwargs = {'trust_remote_code': True}", "trust_remote_code: True"),
])
def test_scan_finds_each_unsafe_pattern(code, problem):
    assert [what for _, what in problems_in([ast.parse(code)])] == [problem]


@pytest.mark.parametrize("code", [
    "import torch\ntorch.load(path, weights_only=True)",
    "import yaml\nyaml.safe_load(text)",
    "import yaml\nyaml.load(text, Loader=yaml.CSafeLoader)",
    "model.eval()",
    "eval('1 + 1')",
    "subprocess.run(['ls'], shell=False)",
    "AutoModel.from_pretrained(p, trust_remote_code=settings.get('trust_remote_code', False))",
    "text = 'torch.load(x) and import pickle'",
])
def test_scan_accepts_safe_code(code):
    assert problems_in([ast.parse(code)]) == []


def test_snakemake_lines_are_scanned(tmp_path):
    rules = tmp_path / "x.smk"
    rules.write_text('import yaml\n\nrule a:\n    params:\n        cfg=lambda w: yaml.load(open("c")),\n'
                     '    threads: 1\n    run:\n        import pickle\n        shell("ls")\n'
                     '        subprocess.run(cmd,\n                       shell=True)\n\n'
                     'try:\n    x = 1\nexcept (OSError, yaml.YAMLError) as e:\n    eval(e)\n')
    assert scan_file(rules, root=tmp_path) == [
        "x.smk:5: yaml.load without a SafeLoader", "x.smk:8: imports pickle", "x.smk:10: shell=True",
        "x.smk:16: eval of a computed value"]


def test_unreadable_snakemake_line_fails_the_scan(tmp_path):
    rules = tmp_path / "x.smk"
    rules.write_text("rule a:\n    input: a b c\n")
    assert scan_file(rules, root=tmp_path) == ["x.smk:2: could not parse for the scan: 'input: a b c'"]
