"""The archive `comfy node pack` builds for the Comfy Registry: which files it holds.

comfy-cli (file_utils.zip_files) packs the git-tracked files minus those `.comfyignore` matches (gitwildmatch
patterns), plus [tool.comfy] includes. The test reproduces that selection (git ls-files + git's own matcher on the
.comfyignore patterns) and, when comfy-cli is installed, also lets comfy-cli build the real archive and compares.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

MUST_SHIP = ("__init__.py", "nodes/nodes.py", "nodes/routes.py", "lora_state/manager.py", "lora_state/stack_rows.py",
             "lora_state/trigger_words.py", "web/lora_state.js", "web/stack_rows.js", "web/docs/LoraStateStack.md",
             "locales/en/nodeDefs.json", "example_workflows/lora_state_basic.json", "README.md", "LICENSE",
             "pyproject.toml", "requirements.txt", "docs/mechanism.md")
NEVER_SHIP_PREFIXES = ("tests/", ".ci/", "scripts/", ".github/", ".venv/")
NEVER_SHIP_PARTS = ("node_modules", "__pycache__", ".egg-info", ".pytest_cache", ".hypothesis")
NEVER_SHIP_FILES = ("constraints.txt",)


def _git(*args, cwd=ROOT, stdin=None):
    return subprocess.run(["git", *args], cwd=cwd, input=stdin, capture_output=True, text=True, check=False)


def packed_files() -> list[str]:
    """git ls-files minus .comfyignore, as comfy-cli selects them."""
    tracked = _git("ls-files", "-z").stdout.split("\0")
    tracked = [p for p in tracked if p and (ROOT / p).exists()]
    patterns = (ROOT / ".comfyignore").read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:   # a bare repo whose only ignore rules are .comfyignore's
        subprocess.run(["git", "init", "-q", tmp], check=True)
        Path(tmp, ".gitignore").write_text(patterns, encoding="utf-8")
        result = _git("check-ignore", "--no-index", "--stdin", cwd=tmp, stdin="\n".join(tracked) + "\n")
    ignored = set(result.stdout.splitlines())
    return sorted(p for p in tracked if p not in ignored)


@pytest.fixture(scope="module")
def files():
    if shutil.which("git") is None or _git("rev-parse", "--is-inside-work-tree").returncode != 0:
        pytest.skip("git or a git checkout is missing: comfy-cli packs git-tracked files")
    return packed_files()


def test_archive_holds_the_pack(files):
    missing = [p for p in MUST_SHIP if p not in files]
    assert missing == [], f"not in the registry archive: {missing}"
    assert any(p.startswith("example_workflows/") for p in files) and any(p.startswith("locales/") for p in files)


def test_archive_holds_no_dev_files(files):
    dev = [p for p in files if p.startswith(NEVER_SHIP_PREFIXES) or p in NEVER_SHIP_FILES
           or any(part in p.split("/") or p.endswith(part) for part in NEVER_SHIP_PARTS) or p.endswith(".pyc")]
    assert dev == [], f"dev files in the registry archive: {dev}"
    assert not [p for p in files if p.startswith("web/") and (".test." in p or ".spec." in p)]


def test_comfy_cli_packs_the_same_files(files, tmp_path):
    python = os.environ.get("LORA_STATE_COMFY_CLI_PYTHON") or sys.executable   # a venv with comfy-cli
    if subprocess.run([python, "-c", "import comfy_cli.file_utils"], capture_output=True, check=False).returncode:
        pytest.skip("comfy-cli not installed (pip install comfy-cli, or set LORA_STATE_COMFY_CLI_PYTHON to a python "
                    "that has it): its own archive was not built")
    archive = tmp_path / "node.zip"
    code = ("import sys, tomllib; from comfy_cli.file_utils import zip_files; "
            "includes = tomllib.load(open('pyproject.toml', 'rb')).get('tool', {}).get('comfy', {}).get('includes', []); "
            "zip_files(sys.argv[1], includes)")
    subprocess.run([python, "-c", code, str(archive)], cwd=ROOT, check=True, capture_output=True,
                   env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    with zipfile.ZipFile(archive) as zf:
        packed = sorted(n for n in zf.namelist() if not n.endswith("/"))
    assert packed == files


def test_registry_metadata():
    try:
        import tomllib
    except ImportError:   # Python 3.10
        pytest.skip("tomllib needs Python 3.11")
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    project, comfy = data["project"], data["tool"]["comfy"]
    assert "Operating System :: OS Independent" in project["classifiers"]
    assert project["license-files"] == ["LICENSE"] and (ROOT / "LICENSE").is_file()
    backend = data["build-system"]["requires"]
    assert any(r.replace(" ", "").startswith("setuptools>=") and int(r.split(">=")[1].split(".")[0]) >= 77
               for r in backend), "PEP 639 license-files needs setuptools>=77"
    assert comfy.get("Icon", "missing") != "", "an empty Icon: give a URL or leave the key out"
    frontend = [d for d in project["dependencies"] if d.startswith("comfyui-frontend-package")]
    assert frontend == ["comfyui-frontend-package>=1.27.10"], "the lowest supported frontend (README says 1.27.10)"
    assert "1.27.10" in (ROOT / "README.md").read_text(encoding="utf-8")
