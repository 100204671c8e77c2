"""House rules that keep the project honest: proto lint, documented settings."""

from __future__ import annotations

import subprocess
from pathlib import Path

from server.settings import Settings

REPO = Path(__file__).resolve().parent.parent


def test_buf_lint_passes():
    buf = REPO / "tests" / "node_modules" / ".bin" / "buf"
    result = subprocess.run([str(buf), "lint"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_lint_catches_violations(tmp_path):
    """The lint setup really lints: a badly named field fails."""
    bad = tmp_path / "proto" / "functions" / "v1"
    bad.mkdir(parents=True)
    (bad / "bad.proto").write_text('syntax = "proto3";\npackage functions.v1;\nmessage bad_name { string BadField = 1; }\n')
    (tmp_path / "buf.yaml").write_text("version: v2\nmodules:\n  - path: proto\nlint:\n  use: [STANDARD]\n")
    buf = REPO / "tests" / "node_modules" / ".bin" / "buf"
    result = subprocess.run([str(buf), "lint"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "bad_name" in result.stdout


def test_readme_documents_every_setting():
    readme = (REPO / "README.md").read_text()
    assert Settings.table() in readme, "README's settings table is stale: paste `python -m server settings`"


def test_readme_opens_with_the_two_commands():
    head = (REPO / "README.md").read_text()[:1500]
    assert "make up" in head and "make test" in head
    assert "make test" in (REPO / ".ci" / "run").read_text()
