"""docs/bad-inputs.md says what the suite's bad-input tests assert (it is generated from them)."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_bad_inputs_table_matches_the_tests() -> None:
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bad_inputs_md.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    text = (REPO / "docs" / "bad-inputs.md").read_text(encoding="utf-8")
    assert "| `huge-patch` | 'inference.patch_size': entry 0: 4096 is outside [1, 512] |" in text
