"""README holds exactly two set-up commands, and CI runs the test one verbatim."""

from __future__ import annotations

import os
import re

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)


def _setup_commands() -> list[str]:
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_two_setup_commands_and_ci_runs_the_test_one():
    commands = _setup_commands()
    assert len(commands) == 2
    quickstart, tests = commands
    assert "examples/quickstart.py" in quickstart and "pytest" in tests
    ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read()
    assert tests in ci.splitlines()
