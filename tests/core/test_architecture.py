"""Architecture rules that a reviewer would otherwise check by eye (docs/architecture.md).

- No function in ``src/polycom`` is longer than ``MAX_FUNCTION_LINES`` unless the line right above its
  ``def`` (or its first decorator) says why, as ``# long-function: <reason>``.
- The import contract lives in ``pyproject.toml`` and ``lint-imports`` runs in CI; here we only check
  that the contract names every top-level package, so a new package cannot slip outside the layers.
"""

from __future__ import annotations

import ast
import pathlib
import sys

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = pathlib.Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "polycom"
MAX_FUNCTION_LINES = 80
REASON_TAG = "# long-function:"


def long_functions_without_reason(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int, int]]:
    """(name, first line, length) of each function longer than `limit` lines with no reason above it."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        length = node.end_lineno - node.lineno + 1
        if length <= limit:
            continue
        first = min([node.lineno] + [d.lineno for d in node.decorator_list])
        above = lines[first - 2].strip() if first >= 2 else ""
        if not above.startswith(REASON_TAG) or not above[len(REASON_TAG) :].strip():
            found.append((node.name, node.lineno, length))
    return found


def test_no_long_function_without_a_written_reason():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        for name, line, length in long_functions_without_reason(path.read_text(encoding="utf-8")):
            offenders.append(f"{path.relative_to(ROOT)}:{line} {name} ({length} lines)")
    assert not offenders, f"functions over {MAX_FUNCTION_LINES} lines without '{REASON_TAG} ...': {offenders}"


def _function(n_body_lines: int, comment: str = "") -> str:
    body = "\n".join(f"    x{i} = {i}" for i in range(n_body_lines))
    return f"{comment}\ndef f():\n{body}\n" if comment else f"def f():\n{body}\n"


@pytest.mark.parametrize(
    ("source", "flagged"),
    [
        (_function(79), False),  # 80 lines with the def: at the limit
        (_function(80), True),
        (_function(80, "# long-function: one argparse table"), False),
        (_function(80, "# long-function:"), True),  # a tag without a reason does not count
        (_function(80, "# some other comment"), True),
    ],
)
def test_long_function_rule_itself(source, flagged):
    assert bool(long_functions_without_reason(source)) is flagged


def test_import_contract_covers_every_top_level_package():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")["layers"]
    named = {part.strip() for layer in layers for part in layer.replace(":", "|").split("|")}
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in SRC.glob("*.py") if not p.stem.startswith("__")}
    assert packages | modules <= named, f"not in the layers contract: {sorted((packages | modules) - named)}"
