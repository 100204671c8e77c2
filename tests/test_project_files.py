"""House rules that keep the project honest: proto lint, documented settings."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from server.settings import Settings

REPO = Path(__file__).resolve().parent.parent


def test_buf_lint_passes():
    buf = REPO / "tests" / "node_modules" / ".bin" / "buf"
    result = subprocess.run([str(buf), "lint"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_project_lint_config_rejects_a_violation_in_our_protos(tmp_path):
    """The project's buf.yaml, on a copy of the project's protos with one
    field misnamed, fails: its exceptions have not switched the naming rules
    (or the proto module) off."""
    shutil.copytree(REPO / "proto", tmp_path / "proto")
    shutil.copytree(REPO / "build" / "third_party", tmp_path / "build" / "third_party")
    shutil.copy(REPO / "buf.yaml", tmp_path / "buf.yaml")
    target = tmp_path / "proto" / "functions" / "v1" / "function.proto"
    text = target.read_text()
    assert "string name = " in text
    target.write_text(text.replace("string name = ", "string BadName = ", 1))
    buf = REPO / "tests" / "node_modules" / ".bin" / "buf"
    result = subprocess.run([str(buf), "lint"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "BadName" in result.stdout and "function.proto" in result.stdout, result.stdout


def test_readme_documents_every_setting():
    readme = (REPO / "README.md").read_text()
    assert Settings.table() in readme, "README's settings table is stale: paste `python -m server settings`"


def test_readme_opens_with_the_two_commands():
    head = (REPO / "README.md").read_text()[:1500]
    assert "make up" in head and "make test" in head
    assert "make test" in (REPO / ".ci" / "run").read_text()
