"""A bounded fuzz run of the OpenAPI document with schemathesis (examples, coverage and
fuzzing phases, 25 examples an operation, a fixed seed): no answer may be a 5xx."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from bench.stack import KEYS


def test_schemathesis_finds_no_server_error(stack, tmp_path):
    cli = Path(sys.executable).parent / "schemathesis"
    args = [str(cli), "run", stack.url + "/openapi.json", "--checks", "not_a_server_error", "--max-examples", "25"]
    args += ["--seed", "1", "--request-timeout", "30", "-H", f"Authorization: Bearer {KEYS['acme']}"]
    args += ["--phases", "examples,coverage,fuzzing"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=tmp_path)  # its cache there, not here
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    cases = re.search(r"(\d+) generated, (\d+) passed", r.stdout)  # warnings may say "failed" too
    assert cases and int(cases[1]) > 0 and cases[1] == cases[2], r.stdout[-3000:]
