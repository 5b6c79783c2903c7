"""What a source file imports, read with `ast` (for tests of which module may depend on which)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imported_names(path: Path) -> set[str]:
    """Dotted names `path` imports: `import a.b` gives "a.b", `from a import b` gives "a.b"
    (a submodule or a name of `a`); relative imports are resolved against the file's package."""
    package = ".".join(path.resolve().relative_to(ROOT).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0]
                module = f"{parent}.{module}" if module else parent
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def outside_base(path: Path, packages: tuple[str, ...]) -> set[str]:
    """The names `path` imports from `packages` other than from their `base` modules: a package's
    registry, its families or their names."""
    found = set()
    for name in imported_names(path):
        for package in packages:
            base = f"{package}.base"
            in_base = name == base or name.startswith(f"{base}.")
            if (name == package or name.startswith(f"{package}.")) and not in_base:
                found.add(name)
    return found
