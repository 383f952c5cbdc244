"""The README's two set-up commands are what CI runs; the package layout keeps its import rules."""

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def readme_commands():
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.strip().splitlines() if line.strip()]


def test_readme_starts_with_two_commands_and_ci_runs_the_test_one():
    cmds = readme_commands()
    assert len(cmds) == 2
    assert cmds[0].startswith("pip install") and "nclab " in cmds[0]
    assert "pytest" in cmds[1]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert cmds[1] in [line.strip() for line in ci]


def test_python_m_nclab_works():
    out = subprocess.run([sys.executable, "-m", "nclab", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "nclab" in out.stdout


def imports_of(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nclab"):
            yield node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("nclab"):
                    yield alias.name


def test_leaf_packages_import_nothing_else_from_nclab():
    """theory and metrics are leaves: everything else may import them, never the reverse (nclab.environment, the
    machine's description and thread policy, depends on the standard library only and is shared by all)."""
    for leaf in ("theory", "metrics"):
        for path in (ROOT / "nclab" / leaf).glob("*.py"):
            for mod in imports_of(path):
                ok = mod.startswith(f"nclab.{leaf}") or mod in ("nclab", "nclab.environment")
                assert ok, f"{path.relative_to(ROOT)} imports {mod}"
