"""The house style, checked: the code is as `ruff format` writes it and passes `ruff check`
(pyflakes and syntax: [tool.ruff] in pyproject.toml)."""

import importlib.util
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None, reason="ruff is not installed (pip install -e '.[test]' brings it)")
def test_code_is_formatted_and_lint_clean():
    fmt = subprocess.run([sys.executable, "-m", "ruff", "format", "--check", "."], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert fmt.returncode == 0, f"run `ruff format .`:\n{fmt.stdout[-2000:]}"
    lint = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert lint.returncode == 0, lint.stdout[-3000:]
