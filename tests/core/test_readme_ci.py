"""The README's copy-paste commands stay true: CI runs exactly the README's test command."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _readme_commands() -> list[str]:
    lines = (ROOT / "README.md").read_text().splitlines()
    return [line.strip() for line in lines[:40] if line.strip().startswith("python3 -m venv")]


def test_readme_opens_with_main_job_and_test_commands():
    commands = _readme_commands()
    assert len(commands) == 2, commands
    assert commands[0].endswith("polycom compare")
    assert "pytest" in commands[1]


def test_ci_runs_exactly_the_readme_test_command():
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert _readme_commands()[1] in ci_lines


def test_readme_usage_example_runs(capsys):
    import re

    text = (ROOT / "README.md").read_text()
    code = re.search(r"## Usage\n\n```python\n(.*?)```", text, re.S).group(1)
    exec(compile(code, "README.md usage", "exec"), {})
    printed = capsys.readouterr().out.split()
    assert printed == ["33816580", "33816576"]  # PolyNorm MLP (+4 coefficients) vs SwiGLU MLP at d=2048
