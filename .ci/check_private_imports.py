"""Fail when a module uses another module's private name (`_name`).

Private means "do not use from outside": a name shared between modules is part of the
internal API and gets a public name. Checked, for every .py file of the packages given
(default: pspc auditor reports migrations bench tests):
  - `from X import _name` where X is another project module (relative or absolute);
  - `X._name` where X was imported as a project module (`import a.b as X`, `from a import X`).
Dunder names (`__version__`) are not private. Exit 1 and one line per use, else exit 0.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ("pspc", "auditor", "reports", "migrations", "bench", "tests")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def absolute(current: str, is_package: bool, level: int, module: str | None) -> str:
    if not level:
        return module or ""
    base = current.split(".") if is_package else current.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([module] if module else []))


def project_modules() -> set[str]:
    return {module_name(p) for top in DEFAULT if (ROOT / top).exists() for p in (ROOT / top).rglob("*.py")}


def violations(path: Path, modules: set[str]) -> list[str]:
    current = module_name(path)
    tree = ast.parse(path.read_text(), filename=str(path))
    aliases: dict[str, str] = {}  # local name -> project module it names
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    aliases[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            source = absolute(current, path.name == "__init__.py", node.level, node.module)
            if source.split(".")[0] not in {m.split(".")[0] for m in modules}:
                continue
            for alias in node.names:
                target = f"{source}.{alias.name}"
                if target in modules:
                    aliases[alias.asname or alias.name] = target
                elif is_private(alias.name) and source != current:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: imports {alias.name} from {source}")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and is_private(node.attr) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and aliases[node.value.id] != current):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: uses {aliases[node.value.id]}.{node.attr}")
    return found


def main(argv: list[str]) -> int:
    tops = argv or list(DEFAULT)
    modules = project_modules()
    found = [line for top in tops for p in sorted((ROOT / top).rglob("*.py")) for line in violations(p, modules)]
    for line in found:
        print(line)
    print(f"check_private_imports: {len(found)} cross-module private name use(s)", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
