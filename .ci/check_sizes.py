"""Fail when a source file is over 600 lines or a function over 80 lines.

Long modules and functions are where concerns mix; the limits keep each module one
concept. Exempt: numba kernels (functions decorated with numba's jit/njit, which must stay
one loop to compile well) and the schema migrations (one revision is one function).
Checked: pspc, auditor, reports (and bench scripts for functions).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80
PACKAGES = ("pspc", "auditor", "reports")


def _is_kernel(node: ast.AST) -> bool:
    for decorator in getattr(node, "decorator_list", ()):
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
        if name in ("jit", "njit", "intrinsic", "vectorize", "guvectorize"):
            return True
    return False


def problems(path: Path) -> list[str]:
    source = path.read_text()
    found = []
    lines = source.count("\n")
    if lines > MAX_FILE_LINES:
        found.append(f"{path.relative_to(ROOT)}: {lines} lines (limit {MAX_FILE_LINES})")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not _is_kernel(node):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.name} is {length} lines "
                             f"(limit {MAX_FUNCTION_LINES})")
    return found


def main() -> int:
    found = [line for top in PACKAGES for path in sorted((ROOT / top).rglob("*.py")) for line in problems(path)]
    for line in found:
        print(line)
    print(f"check_sizes: {len(found)} over the limits", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
