"""The import graph of the project, read from the source with ``ast`` (module- and function-level
imports alike): no cycles, and no arrow from a lower layer to a higher one (docs/architecture.md,
"Layers"). Also: every module path docs/architecture.md names exists."""

from __future__ import annotations

import ast
import io
import re
import sys
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "reports", "hydra_plugins", "fpdm", "baselines", "sweeps")

# Top to bottom. A module may import its own layer or any layer below it, never one above.
# Modules of one layer may import each other (the cycle check still applies).
LAYERS: list[tuple[str, ...]] = [
    ("harness.run", "harness.inspect", "harness.sample", "harness.models", "harness.app"),  # entry points, public API
    ("reports", "hydra_plugins"),  # the report and the Optuna sweeper, started by the app
    ("harness.config",),  # schemas, YAML, validation
    ("harness.stages",),  # job, train, sample, evaluate, cache, records, checkpoints, models
    ("harness.compute", "harness.diffusion", "harness.metrics", "harness.data"),  # domain rooms
    ("harness.runtime",),  # atomic writes, hashing, torch.distributed
    ("fpdm",),  # the model under study
    ("baselines",),  # DiT, shared layers and presets, the Registry
    ("harness", "sweeps"),  # bare package markers: nothing imports them for code
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            mods[_module_name(path)] = path
    return mods


def _resolve(name: str, mods: dict[str, Path]) -> str | None:
    """The project module an import names (``a.b.func`` -> ``a.b``), or None outside the project."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    mods = project_modules()
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the package of this module
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                # ``from pkg import submodule`` imports the submodule
                names = [f"{module}.{a.name}" if f"{module}.{a.name}" in mods else module for a in node.names]
            else:
                continue
            deps |= {r for n in names if (r := _resolve(n, mods)) and r != mod}
        graph[mod] = deps
    return graph


def layer_of(mod: str) -> int:
    best, rank = -1, None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (mod == p or mod.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    assert rank is not None, f"{mod} is in no layer: add it to LAYERS and docs/architecture.md"
    return rank


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    # function-level: harness.app.run imports the job runner inside task()
    assert "harness.stages.job" in graph["harness.app.run"]
    # relative: the data package registers its sources with ``from . import digits, ...``
    assert {"harness.data.digits", "harness.data.registry"} <= graph["harness.data"]
    assert "fpdm.solvers" in graph["fpdm.training_modes"]


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert _cycles(import_graph()) == []


def test_every_arrow_points_down():
    upward = [
        f"{m} (layer {layer_of(m)}) -> {d} (layer {layer_of(d)})"
        for m, deps in import_graph().items()
        for d in sorted(deps)
        if layer_of(d) < layer_of(m)
    ]
    assert upward == [], "\n".join(upward)


def test_the_config_layer_does_not_import_the_job_runner():
    graph = import_graph()
    for mod in (m for m in graph if m.startswith("harness.config")):
        assert not {"harness.stages.job", "harness.stages.train", "harness.stages.sample"} & graph[mod], mod


@pytest.mark.parametrize("pkg", ["fpdm", "baselines"])
def test_model_packages_never_import_the_harness(pkg):
    graph = import_graph()
    bad = {
        m: sorted(d for d in deps if d.startswith(("harness", "reports", "hydra_plugins")))
        for m, deps in graph.items()
        if m.split(".")[0] == pkg
    }
    assert not any(bad.values()), bad


# ------------------------------------------------------------------ docs/architecture.md
_PATH_RE = re.compile(
    r"\b((?:harness|fpdm|baselines|reports|hydra_plugins|sweeps|tests|benchmarks|docs)"
    r"/[\w./-]*[\w/])"
)


def _layout_paths(text: str) -> list[str]:
    """Paths of the "Layout" tree: a line at column 0 names a folder or file (``a, b`` for two), an
    indented line a file or folder inside the last folder named at column 0."""
    block = text.split("## Layout", 1)[1].split("```")[1]
    paths, folder = [], ""
    for line in block.splitlines():
        if not line.strip() or line.startswith("   "):  # blank, or a description's continuation
            continue
        head = line.strip().split("  ")[0]
        if line[0] != " ":
            names = [n.strip() for n in head.split(",")]
            paths += names
            folder = names[-1] if names[-1].endswith("/") else ""
        else:
            paths.append(folder + head)
    return paths


def test_every_path_in_architecture_doc_exists():
    text = (ROOT / "docs" / "architecture.md").read_text()
    layout = _layout_paths(text)
    assert len(layout) > 40, "the Layout tree should name the modules it describes"
    paths = set(layout) | set(_PATH_RE.findall(text))
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert missing == [], f"docs/architecture.md names paths that do not exist: {missing}"


def test_every_room_of_the_harness_is_in_the_layout():
    layout = set(_layout_paths((ROOT / "docs" / "architecture.md").read_text()))
    rooms = {f"harness/{p.name}/" for p in (ROOT / "harness").iterdir() if (p / "__init__.py").exists()}
    assert rooms <= layout, f"rooms missing from docs/architecture.md: {sorted(rooms - layout)}"


def test_every_dotted_module_in_architecture_doc_exists():
    text = (ROOT / "docs" / "architecture.md").read_text()
    mods = project_modules()
    dotted = set(re.findall(r"`((?:harness|fpdm|baselines|reports)(?:\.\w+)+)", text))
    assert dotted, "the architecture doc should name modules in dotted form too"
    missing = sorted(
        d
        for d in dotted
        if _resolve(d, mods) is None or (d not in mods and _resolve(d, mods).count(".") < d.count(".") - 1)
    )
    assert missing == [], f"docs/architecture.md names modules that do not exist: {missing}"


def test_every_room_is_in_a_layer():
    for mod in project_modules():
        layer_of(mod)


def test_sweep_presets_live_in_the_group_folder():
    """Hydra finds ``sweep=NAME`` only as sweeps/sweep/NAME.yaml (search path ``pkg://sweeps``): a
    preset dropped directly into sweeps/ would silently not exist."""
    from harness.config import list_sweeps

    assert not list((ROOT / "sweeps").glob("*.yaml")), "move sweep presets into sweeps/sweep/"
    assert set(list_sweeps()) >= {"budget_schedules", "depth", "solver_type", "tune"}
    assert "Path(__file__)" not in (ROOT / "harness" / "config" / "__init__.py").read_text()


def test_no_comment_points_outside_the_repository():
    """Comments cite the paper or docs/ (docs/paper-notes.md), never notes a user does not have."""
    banned = ["paper" + "-facts", "stack" + "-notes", "style" + "-guide", "../" + "shared/"]
    hits = []
    for path in ROOT.rglob("*"):
        if (
            path.suffix in (".py", ".md", ".yaml", ".toml", ".cfg")
            and ".git" not in path.parts
            and "site-packages" not in path.parts
        ):
            text = path.read_text(errors="ignore")
            hits += [f"{path.relative_to(ROOT)}: {b}" for b in banned if b in text]
    assert hits == []


# ------------------------------------------------------------------ function length
MAX_FUNCTION_LINES = 60
SHORT_FUNCTION_PACKAGES = ("harness", "reports", "hydra_plugins")


def _code_lines(source: str) -> set[int]:
    """Line numbers that hold a token of code: not blank, not comment-only (a multi-line string counts)."""
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}
    skip |= {tokenize.ENCODING, tokenize.ENDMARKER}
    lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in skip:
            lines.update(range(tok.start[0], tok.end[0] + 1))
    return lines


def _docstring_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> set[int]:
    """Line numbers of the function's docstring, if it has one."""
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return set(range(first.lineno, first.end_lineno + 1))
    return set()


def long_functions(limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``path:line name (N lines)`` of every function (method, nested function) with more than ``limit``
    code lines: from ``def`` to its last line, less the docstring, blank lines and comment-only lines."""
    out = []
    for pkg in SHORT_FUNCTION_PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            source = path.read_text()
            code = _code_lines(source)
            for node in ast.walk(ast.parse(source, str(path))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    span = set(range(node.lineno, node.end_lineno + 1)) - _docstring_lines(node)
                    n = len(span & code)
                    if n > limit:
                        out.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    return out


def test_long_function_finder_counts_code_lines_only(tmp_path, monkeypatch):
    pkg = tmp_path / "harness"
    pkg.mkdir()
    doc = '    """A docstring\n' + "\n".join(f"    line {i}" for i in range(30)) + '\n    """\n'
    filler = "\n\n    # a comment-only line\n\n"

    def func(name: str, statements: int, tail: str = "") -> str:
        body = "\n".join(f"    x{i} = {i}" for i in range(statements))
        return f"def {name}():\n{doc}{filler}{body}\n{tail}"

    # 37 lines of docstring, blanks and comments in each; a 3-line string is code, '#' line and all
    string = "    s = '''\n# not a comment\n'''\n"
    (pkg / "m.py").write_text(func("at_limit", 59) + "\n\n" + func("over", 58, string))
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    # at_limit: def + 59 statements = 60 lines; over: def + 58 statements + 3 string lines = 62
    assert long_functions() == ["harness/m.py:99 over (62 lines)"]


def test_no_function_is_longer_than_the_limit():
    """Functions in the harness, the reports and the sweeper stay short enough to read in one screen.

    The limit counts code lines from ``def`` to the function's last line: the docstring, blank
    lines and comment-only lines are left out. A formatter wraps a long call onto several lines,
    which is layout, and a docstring is documentation, not length; what is counted is the code a
    reader has to hold in mind. 60 code lines, signature included, is the house rule."""
    assert long_functions() == []


ANNOTATED_PACKAGES = ("harness", "reports", "fpdm", "baselines", "hydra_plugins")


def unannotated_public_functions() -> list[str]:
    """``path:line name`` of every module-level public function missing a parameter or return annotation."""
    missing = []
    for pkg in ANNOTATED_PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for node in ast.parse(path.read_text(), str(path)).body:
                if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
                    continue
                args = [a for a in node.args.args + node.args.kwonlyargs if a.arg not in ("self", "cls")]
                if node.returns is None or any(a.annotation is None for a in args):
                    missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    return missing


def test_public_functions_are_annotated():
    """Every public module-level function says what it takes and returns: the signature is the
    contract other layers call (configs are DictConfig, tensors torch.Tensor, ...), and a reader or a
    type checker should not have to read the body to learn it. ``from __future__ import annotations``
    keeps these free at run time."""
    assert unannotated_public_functions() == []
