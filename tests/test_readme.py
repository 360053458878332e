"""The README's Quick start test line is exactly what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quick_start_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)[0].splitlines()


def test_ci_runs_the_readme_test_line():
    test_lines = [line for line in quick_start_lines() if "pytest" in line]
    assert len(test_lines) == 1
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_lines[0] in ci_lines
