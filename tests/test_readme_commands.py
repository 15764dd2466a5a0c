"""The README opens with the two commands; CI runs the test one."""

from __future__ import annotations

import re
import subprocess

from tests.conftest import REPO


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    first_block = re.search(r"```(?:sh|bash|console)?\n(.*?)```", text, re.S)
    assert first_block, "README has no code block"
    return [line.strip() for line in first_block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def test_readme_opens_with_make_run_and_make_test() -> None:
    assert readme_commands() == ["make run", "make test"]


def test_ci_runs_the_readme_test_command() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)


def test_makefile_targets_exist_for_both_commands() -> None:
    out = subprocess.run(["make", "-n", "run", "test"], cwd=REPO, capture_output=True, text=True, check=True)
    assert "forecast-service serve --train-missing" in out.stdout
    assert "pytest" in out.stdout
