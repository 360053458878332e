"""The patch-training guide's commands name only options that exist, and the README links the guide."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from cmamil.cli import main

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "patch-training.md"


def _commands() -> list[list[str]]:
    blocks = re.findall(r"```bash\n(.*?)\n```", GUIDE.read_text(), flags=re.S)
    text = "\n".join(blocks).replace("\\\n", " ")
    return [shlex.split(line)[1:] for line in text.splitlines() if line.startswith("cmamil ")]


def test_guide_commands_use_existing_options():
    import click

    commands = _commands()
    assert {c[0] for c in commands} == {"train", "evaluate", "crossmag"}
    for args in commands:
        command = main.get_command(click.Context(main), args[0])
        known = {opt for param in command.params for opt in param.opts + param.secondary_opts}
        used = {a.split("=")[0] for a in args[1:] if a.startswith("--")}
        assert used <= known, (args[0], used - known)


def test_readme_links_the_guide():
    assert "(docs/patch-training.md)" in (ROOT / "README.md").read_text()
