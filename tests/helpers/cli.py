"""Run ``python -m core ...`` in-process and capture what it printed."""

from __future__ import annotations

import pytest

from core.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The exit code, stdout and stderr of ``python -m core *argv``."""
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err
