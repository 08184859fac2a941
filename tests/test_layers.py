"""The package's architecture, enforced: layers, no import cycles, gradio only in the app,
the environment read only by the settings module, no private names across modules.

The rules are checked on the source (an AST scan of every import, function-level ones
included), so a broken rule fails here before it breaks anything at run time. The checker
itself is tested on small synthetic packages: each rule must catch its own violation.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

import explorer

PACKAGE = Path(explorer.__file__).resolve().parent

#: Layer of each top-level part of ``explorer`` (lowest first). A module may import its
#: own part and parts of a LOWER layer only: never a higher one, never a sibling part of
#: the same layer.
LAYERS: dict[str, int] = {
    "core": 0,
    "engine": 1, "judges": 1,
    "methods": 2,
    "attacks": 3,
    "evaluation": 4,
    "research": 5,
    "storage": 6, "viz": 6, "defenses": 6,
    "bench": 7, "demo": 7,
    "settings": 8,
    "cli": 9, "app": 9, "__main__": 10, "experts": 10,
}
#: Modules that may import anything below them: the facades re-export the public API
#: (``explorer.experts``: the expert pages, from research and storage).
FACADES = {"explorer", "explorer.__main__", "explorer.experts"}
#: The only part allowed to import the UI toolkits.
UI_PART, UI_MODULES = "app", {"gradio", "gradio_client", "spaces"}
#: The only module allowed to read the environment.
ENV_READERS = {"explorer.settings"}
#: The only modules allowed to import a module whose name is not written in the source
#: (``importlib.import_module(name)``): the facade's lazy exports, and the plugin loader,
#: which imports the modules a user names in EXPLORER_PLUGINS (never one of ours).
DYNAMIC_IMPORTERS = {"explorer", "explorer.attacks.base"}


@dataclass(frozen=True)
class Import:
    module: str          # the importing module
    target: str          # the imported module (resolved, absolute)
    names: tuple         # names taken from it (``from x import a, b``)
    line: int
    typing_only: bool    # inside ``if TYPE_CHECKING:``


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _typing_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                lines.update(range(sub.lineno, (sub.end_lineno or sub.lineno) + 1))
    return lines


#: Calls that import a module by name at run time: ``importlib.import_module(...)``,
#: ``import_module(...)`` (imported from importlib) and ``__import__(...)``.
_DYNAMIC_CALLS = ("importlib.import_module", "import_module", "__import__")


def scan(root: Path) -> tuple[dict[str, Path], list[Import]]:
    """Every module under ``root`` (a package folder) and every import they make, those made
    at run time by ``importlib.import_module("explorer....")`` with a name written in the
    source included (they count as imports for every rule). A dynamic import whose name is
    not written out is recorded with the target ``"?"`` (see :func:`dynamic_violations`)."""
    modules = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    found: list[Import] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = _typing_lines(tree)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in _DYNAMIC_CALLS:
                arg = node.args[0] if node.args else None
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    found.append(Import(name, arg.value, (), node.lineno,
                                        node.lineno in typing_only))
                else:
                    found.append(Import(name, "?", (), node.lineno, False))
                continue
            if isinstance(node, ast.Import):
                for a in node.names:
                    found.append(Import(name, a.name, (), node.lineno,
                                        node.lineno in typing_only))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                names = tuple(a.name for a in node.names)
                # ``from pkg import submodule`` imports the submodule
                subs = [n for n in names if f"{target}.{n}" in modules]
                for n in subs:
                    found.append(Import(name, f"{target}.{n}", (), node.lineno,
                                        node.lineno in typing_only))
                rest = tuple(n for n in names if n not in subs)
                if rest or not subs:
                    found.append(Import(name, target, rest, node.lineno,
                                        node.lineno in typing_only))
    return modules, found


def part(module: str) -> str | None:
    bits = module.split(".")
    return bits[1] if len(bits) > 1 and bits[0] == "explorer" else None


def dynamic_violations(imports: list[Import], allowed=DYNAMIC_IMPORTERS) -> list[str]:
    """Imports of a name the source does not write out, outside :data:`DYNAMIC_IMPORTERS`:
    no rule can check them."""
    return [f"{i.module}:{i.line}: imports a module by a computed name"
            for i in imports if i.target == "?" and i.module not in allowed]


def layer_violations(imports: list[Import], layers=LAYERS, facades=FACADES) -> list[str]:
    out = []
    for imp in imports:
        src, dst = part(imp.module), part(imp.target)
        if imp.module in facades or dst is None or src == dst:
            continue
        if src not in layers or dst not in layers:
            out.append(f"{imp.module}:{imp.line}: part {src if src not in layers else dst!r} "
                       f"has no layer in LAYERS")
        elif layers[dst] > layers[src]:
            out.append(f"{imp.module}:{imp.line}: imports {imp.target} (layer "
                       f"{layers[dst]} {dst}) from layer {layers[src]} {src}")
        elif layers[dst] == layers[src]:
            out.append(f"{imp.module}:{imp.line}: imports sibling part {imp.target} "
                       f"({src} and {dst} share layer {layers[src]})")
    return out


def cycles(modules: dict[str, Path], imports: list[Import]) -> list[list[str]]:
    """Import cycles between modules: every import counts, function-level and
    ``TYPE_CHECKING`` ones included (a type-only cycle still ties two modules together)."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for imp in imports:
        if imp.target == imp.module:
            continue
        if imp.target in modules:
            graph[imp.module].add(imp.target)
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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


def ui_violations(imports: list[Import]) -> list[str]:
    return [f"{i.module}:{i.line}: imports {i.target} outside explorer.{UI_PART}"
            for i in imports if i.target.split(".")[0] in UI_MODULES
            and part(i.module) != UI_PART]


def private_violations(imports: list[Import], modules: dict[str, Path]) -> list[str]:
    """``from explorer.x import _name`` across modules: an underscore stays private."""
    return [f"{i.module}:{i.line}: imports private {i.target}.{n}"
            for i in imports if i.target.startswith("explorer") for n in i.names
            if n.startswith("_") and not n.startswith("__") and i.target != i.module]


def env_violations(modules: dict[str, Path], readers=ENV_READERS) -> list[str]:
    out = []
    for name, path in modules.items():
        if name in readers:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            text = None
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "putenv"):
                text = ast.unparse(node)
            elif isinstance(node, ast.ImportFrom) and node.module == "os" and any(
                    a.name in ("environ", "getenv") for a in node.names):
                text = "from os import environ/getenv"
            if text:
                out.append(f"{name}:{node.lineno}: reads the environment ({text})")
    return out


# -- the rules on the real package ----------------------------------------------------------
MODULES, IMPORTS = scan(PACKAGE)


def test_every_part_has_a_layer():
    parts = {part(m) for m in MODULES} - {None}
    assert parts <= set(LAYERS), sorted(parts - set(LAYERS))
    assert {"core", "engine", "methods", "research", "evaluation", "storage", "viz", "cli",
            "app", "bench", "demo"} <= parts


def test_dependencies_point_down():
    assert layer_violations(IMPORTS) == []


def test_no_import_cycles():
    assert cycles(MODULES, IMPORTS) == []


def test_no_hidden_imports():
    """Every ``importlib.import_module`` names its module in the source (so the rules above
    see it), except in the facade and the plugin loader."""
    assert dynamic_violations(IMPORTS) == []


def test_only_the_app_imports_gradio():
    assert ui_violations(IMPORTS) == []


def test_no_private_names_across_modules():
    assert private_violations(IMPORTS, MODULES) == []


def test_only_settings_reads_the_environment():
    assert env_violations(MODULES) == []


def test_importing_the_library_loads_no_ui():
    import subprocess
    import sys
    code = ("import sys, explorer, explorer.methods.fsour, explorer.research.transfer, "
            "explorer.storage.jobs, explorer.viz.figures, explorer.cli.main; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('gradio', 'gradio_client', 'spaces')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


# -- the checker catches what it should ------------------------------------------------------
def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "explorer"
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    for d in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        (d / "__init__.py").touch()
    return root


def test_checker_catches_each_violation(tmp_path):
    root = _package(tmp_path, {
        "core/route.py": "from explorer.methods.fsour import fsour\n",       # upward
        "core/model.py": "def f():\n    from explorer.core import route\n",  # fine
        "storage/library.py": "from explorer.viz import figures\n",         # sibling
        "viz/figures.py": "import gradio as gr\n",                          # UI outside app
        "engine/cone.py": "from explorer.engine.scoring import _head\n",    # private
        "engine/scoring.py": "from explorer.engine import cone\nimport os\nX = os.environ\n",
        "methods/fsour.py": "import math\n",
        "app/build.py": "import gradio\nfrom explorer.cli import main\n",   # sibling
        "cli/main.py": "from explorer.app import build\n",                  # cycle + sibling
        "evaluation/evaluate.py": ("import importlib\n"                      # hidden upward
                                   "def f():\n"
                                   "    return importlib.import_module('explorer.research.x')\n"
                                   "def g(name):\n"
                                   "    return importlib.import_module(name)\n"),
    })
    modules, imports = scan(root)
    layers = layer_violations(imports)
    assert any("core.route" in v and "methods.fsour" in v for v in layers)
    assert any("storage.library" in v and "sibling" in v for v in layers)
    assert any("app.build" in v and "sibling" in v for v in layers)
    assert not any("core.model" in v for v in layers)
    assert any("evaluation.evaluate:3" in v and "research.x" in v for v in layers)
    assert dynamic_violations(imports) == [
        "explorer.evaluation.evaluate:5: imports a module by a computed name"]
    assert any("viz.figures" in v for v in ui_violations(imports))
    assert not any("app.build" in v for v in ui_violations(imports))
    assert private_violations(imports, modules) == [
        "explorer.engine.cone:1: imports private explorer.engine.scoring._head"]
    assert sorted(map(tuple, cycles(modules, imports))) == [
        ("explorer.app.build", "explorer.cli.main"),
        ("explorer.engine.cone", "explorer.engine.scoring")]
    assert env_violations(modules) == [
        "explorer.engine.scoring:3: reads the environment (os.environ)"]


def test_type_checking_imports_count(tmp_path):
    root = _package(tmp_path, {
        "core/model.py": "from explorer.core.control import RouteControl\n",
        "core/control.py": ("from typing import TYPE_CHECKING\n"
                            "if TYPE_CHECKING:\n    from explorer.core.model import MoEModel\n"),
        "engine/cone.py": ("from typing import TYPE_CHECKING\n"
                           "if TYPE_CHECKING:\n    from explorer.methods.fsour import X\n"),
    })
    modules, imports = scan(root)
    assert cycles(modules, imports) == [["explorer.core.control", "explorer.core.model"]]
    assert [v.split(":")[0] for v in layer_violations(imports)] == ["explorer.engine.cone"]
