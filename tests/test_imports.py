"""No module of the package imports another that imports it back (directly or in a longer
circle, at module level or inside a function): a shared piece lives where both can import
it. Read from the source with `ast`, so nothing is imported."""

import ast
import os

from helpers import ROOT

PACKAGES = {"keras_sngm": "keras_sngm", "keras_sngm_trainers": "trainers"}


def _modules():
    out = {}
    for package, folder in PACKAGES.items():
        base = os.path.join(ROOT, folder)
        for dirpath, _, files in os.walk(base):
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(dirpath, f), base)[:-3].replace(os.sep, ".")
                    rel = rel.removesuffix("__init__").rstrip(".")
                    out[f"{package}.{rel}" if rel else package] = os.path.join(dirpath, f)
    return out


def _imports(path, modules):
    """The package's modules that the file at `path` imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                found.add(name if name in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found & set(modules)


def import_circles(modules):
    graph = {m: _imports(path, modules) - {m} for m, path in modules.items()}
    circles = set()

    def walk(start, node, path):
        for nxt in graph[node]:
            if nxt == start:
                circles.add(tuple(path))
            elif nxt > start and nxt not in path:  # each circle once, from its first module
                walk(start, nxt, path + [nxt])

    for m in graph:
        walk(m, m, [m])
    return sorted(circles)


def test_no_import_circles():
    modules = _modules()
    assert "keras_sngm_trainers.planning.cli" in modules and "keras_sngm.sngm" in modules
    assert import_circles(modules) == []


def test_a_circle_is_found(tmp_path):
    """The check itself: two files importing each other inside functions are reported."""
    (tmp_path / "a.py").write_text("def f():\n    from pkg import b\n")
    (tmp_path / "b.py").write_text("from pkg.a import f\n")
    assert import_circles({"pkg.a": str(tmp_path / "a.py"), "pkg.b": str(tmp_path / "b.py")}) == [("pkg.a", "pkg.b")]
