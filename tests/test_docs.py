"""The documentation's commands, run: the README's API round trip, every Python block of
docs/python.md and the shell block of docs/cli.md, against a running stack; and the README
stays a front door whose links stay in the repository."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from pathlib import Path

from app.demo import omniglot_task
from bench.stack import KEYS, ROOT


def blocks(doc: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", doc.read_text(), flags=re.S)


def env_for(stack) -> dict:
    bin_dir = str(Path(sys.executable).parent)
    return os.environ | {
        "RAPID_ADAPT_URL": stack.url,
        "RAPID_ADAPT_API_KEY": KEYS["acme"],
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
    }


def workdir(tmp_path: Path) -> Path:
    support, queries, _ = omniglot_task(seed=2, n_way=3, n_query=1)

    for k, example in enumerate(support):
        (tmp_path / "classes" / f"char{k}").mkdir(parents=True)
        (tmp_path / "classes" / f"char{k}" / "a.png").write_bytes(base64.b64decode(example["input"]["image"]))
    (tmp_path / "query.png").write_bytes(base64.b64decode(queries[0]["image"]))
    (tmp_path / "queries").mkdir()
    for i, q in enumerate(queries[1:3]):
        (tmp_path / "queries" / f"q{i}.png").write_bytes(base64.b64decode(q["image"]))
    (tmp_path / "points.csv").write_text("x,y\n-4,1.918\n-2,-0.282\n0.5,-0.959\n2,1.683\n3.5,1.197\n")
    return tmp_path


def run_bash(script: str, stack, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-e", "-c", script], cwd=cwd, env=env_for(stack), capture_output=True, text=True, timeout=300
    )


def test_the_readme_round_trip(stack, tmp_path):
    script = next(b for b in blocks(ROOT / "README.md", "bash") if "curl" in b)
    r = run_bash(script, stack, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert '"predictions"' in r.stdout and r.stdout.strip().endswith("204")


def test_the_python_docs(stack, tmp_path):
    cwd, printed = workdir(tmp_path), []
    for code in blocks(ROOT / "docs" / "python.md", "python"):
        r = subprocess.run(
            [sys.executable, "-c", code], cwd=cwd, env=env_for(stack), capture_output=True, text=True, timeout=300
        )
        assert r.returncode == 0, code + r.stdout + r.stderr
        printed.append(r.stdout)
    assert "422 invalid_shape support[0].input" in printed[0]  # the error example names its field


def test_the_shell_docs(stack, tmp_path):
    (script,) = blocks(ROOT / "docs" / "cli.md", "bash")
    r = run_bash(script, stack, workdir(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "exit code 1" in r.stdout and "succeeded" in r.stdout


def test_the_readme_is_a_front_door_that_links_inside():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    for target in re.findall(r"\]\(([^)#]+)[^)]*\)", text):
        if target.startswith("http"):
            continue  # none, at the time of writing
        assert (ROOT / target).exists(), target
    assert "../shared" not in text
    for doc in (ROOT / "docs").glob("*.md"):
        for target in re.findall(r"\]\(([^)#]+)[^)]*\)", doc.read_text()):
            assert target.startswith("http") or (doc.parent / target).exists(), (doc.name, target)
