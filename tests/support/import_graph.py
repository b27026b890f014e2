"""The project's module import graph, read from the source with `ast`.

Every import counts: at module level, inside functions, and under `TYPE_CHECKING`, since
each of them is a dependency a reader has to follow. Used by tests/test_structure.py, and
runnable to print the package-level picture: `python -m tests.support.import_graph`.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("board", "devices", "eif", "nitro_emu")


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the product packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module `name` refers to (a module, or the package defining a name)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> dict[str, set[str]]:
    """Project modules imported by `module`, and every top-level name it imports."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    external: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[:len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # `from pkg import sub` imports the module pkg.sub; `from pkg import name`
            # imports pkg (where the name is defined).
            names = [f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in modules
                     else prefix for alias in node.names]
        else:
            continue
        for name in names:
            target = _resolve(name, modules)
            if target is None:
                external.add(name.split(".")[0])
                continue
            # Importing a.b.c runs a/__init__ and a/b/__init__ first: those count too.
            parts = target.split(".")
            for depth in range(1, len(parts) + 1):
                enclosing = ".".join(parts[:depth])
                if enclosing in modules and enclosing != module \
                        and not module.startswith(enclosing + "."):
                    found.add(enclosing)
    return {"project": found, "external": external}


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the project modules it imports."""
    modules = project_modules(root)
    return {m: imports_of(m, p, modules)["project"] for m, p in modules.items()}


def external_imports(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> top-level names of the non-project modules it imports."""
    modules = project_modules(root)
    return {m: imports_of(m, p, modules)["external"] for m, p in modules.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def package_picture(edges: dict[str, set[str]], depth: int = 2) -> list[str]:
    """One line per package (first `depth` name parts): the packages it imports."""
    def group(name: str) -> str:
        return ".".join(name.split(".")[:depth])

    packages: dict[str, set[str]] = {}
    for module, targets in edges.items():
        uses = packages.setdefault(group(module), set())
        uses.update(group(t) for t in targets if group(t) != group(module))
    return [f"{p} -> {', '.join(sorted(u)) or '(nothing)'}" for p, u in sorted(packages.items())]


if __name__ == "__main__":
    edges = graph()
    print("\n".join(package_picture(edges)))
    for component in cycles(edges):
        print("cycle:", " <-> ".join(component))
