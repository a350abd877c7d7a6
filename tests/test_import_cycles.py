"""No import cycle among the package's modules (issue 11).

Every module of the package — ``diffdiag/``, plus ``integrations/`` and ``reports/``
as they ship (``diffdiag.integrations``, ``diffdiag.reports``) — is parsed with
:mod:`ast`. An edge A -> B is any import of package module B inside A:

* ``import``/``from ... import`` at module level and inside functions (imports under
  ``if TYPE_CHECKING:`` never run and are left out);
* a string literal that is exactly a dotted package module name (``import_module("diffdiag.x")``,
  the tables of lazily imported sources and sinks; docstrings excepted), and an f-string such
  as ``f"diffdiag.integrations.{kind}_hook"`` (an edge to every module it can name).

Importing ``a.b.c`` adds no edge to ``a`` or ``a.b`` (a package importing its own
submodules is not a cycle), and the bare string ``"diffdiag"`` (``resources.files``)
is no edge: the top package is always imported before any of its modules.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"diffdiag": REPO / "diffdiag", "diffdiag.integrations": REPO / "integrations",
         "diffdiag.reports": REPO / "reports"}


def package_modules() -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is_package) for every ``.py`` file of the package."""
    mods: dict[str, tuple[Path, bool]] = {}
    for prefix, root in ROOTS.items():
        for f in sorted(root.rglob("*.py")):
            rel = f.relative_to(root).with_suffix("").parts
            if "templates" in rel:
                continue
            is_pkg = rel[-1] == "__init__"
            parts = rel[:-1] if is_pkg else rel
            mods[".".join((prefix, *parts))] = (f, is_pkg)
    return mods


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST):
    """Every node except the bodies of ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def imports_of(name: str, path: Path, is_pkg: bool, modules: dict) -> set[str]:
    """The package modules ``name`` imports (see the module docstring for the rules)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if is_pkg else name.rpartition(".")[0]
    found: set[str] = set()
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}

    def add(target: str) -> None:
        # the module itself when it is one; else the nearest enclosing package module
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)

    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("diffdiag"):
                    add(a.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if not base.startswith("diffdiag"):
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                add(sub if sub in modules else base)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value \
                and node.value in modules \
                and id(node) not in docstrings:
            add(node.value)
        elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant) \
                and str(node.values[0].value).startswith("diffdiag."):
            # f"diffdiag.integrations.{kind}_hook": every module the pattern can name
            pattern = re.compile("".join(re.escape(str(v.value)) if isinstance(v, ast.Constant) else r"\w+"
                                         for v in node.values))
            for m in modules:
                if pattern.fullmatch(m):
                    add(m)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = package_modules()
    return {name: imports_of(name, path, is_pkg, mods) for name, (path, is_pkg) in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` of ``graph``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, iters = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while iters:
            nxt = next(iters[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iters.pop()
                continue
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                iters.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_imports_of_follows_each_rule(tmp_path) -> None:
    """Each kind of edge on a module written here (ground truth), and none from a docstring or TYPE_CHECKING."""
    names = ["diffdiag", "diffdiag.pkg", "diffdiag.pkg.a", "diffdiag.pkg.b", "diffdiag.c", "diffdiag.d",
             "diffdiag.e", "diffdiag.x_hook", "diffdiag.y_hook", "diffdiag.f"]
    modules = {n: (Path(n), n in ("diffdiag", "diffdiag.pkg")) for n in names}
    src = tmp_path / "a.py"
    src.write_text('''"""Mentions "diffdiag.f" in its docstring only."""
from typing import TYPE_CHECKING
from . import b
from ..c import thing
if TYPE_CHECKING:
    from diffdiag import f
def later(kind):
    import diffdiag.d
    from importlib import import_module
    import_module("diffdiag.e")
    return import_module(f"diffdiag.{kind}_hook")
''')
    assert imports_of("diffdiag.pkg.a", src, False, modules) == {
        "diffdiag.pkg.b", "diffdiag.c", "diffdiag.d", "diffdiag.e", "diffdiag.x_hook", "diffdiag.y_hook"}


def test_the_real_graph_has_known_edges() -> None:
    g = import_graph()
    assert "diffdiag.integrations.hook" in g and "diffdiag.reports.html" in g
    assert "diffdiag.model" in g["diffdiag.pipeline"]                      # module level, relative
    assert "diffdiag.causes" in g["diffdiag.pipeline"]                     # inside a function
    assert "diffdiag.integrations.wandb_source" in g["diffdiag.sources"]   # a lazily imported source, by name
    assert "diffdiag.model" in g["diffdiag.reports"]                       # absolute, from a shipped subpackage


def test_find_cycle_reports_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
