"""Every shell command in the README's code blocks runs as written, as a newcomer would run it.

The README's ``bash`` blocks run in order, each as one ``bash -e`` script, from the root of a
fresh copy of this repository in a temporary folder. Before the first block the test makes
what a reader is assumed to have: an empty virtual environment whose ``bin`` is first on
``PATH`` (the README's ``pip install`` commands fill it, from the package registry, as a
reader's would). No FAL_KEY, so everything runs on the embedded engine.

Two commands are not run, each for a stated reason (a new command cannot be left out
silently: the test fails on any command it neither runs nor lists here):
- ``make test``: it is the command that runs this test.
- ``kubectl``: needs a Kubernetes cluster; the README says that part is untested on one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
SHELL_BLOCKS = re.findall(r"```(?:bash|sh|shell)\n(.*?)```", README, re.S)
NOT_RUN = {
    "make test": "the command that runs this test",
    "kubectl": "needs a Kubernetes cluster (README: untested on a cluster)",
}
# Copied as a fresh clone has them: no venv, no outputs of earlier runs.
IGNORED = shutil.ignore_patterns(
    ".git", ".venv", "bria_data", ".dagster_home", "__pycache__", ".pytest_cache",
    ".ruff_cache", "*.egg-info", ".bench", ".tmp_dagster*", ".bria_journal.sqlite*",
)  # fmt: skip

pytestmark = pytest.mark.slow


def _commands(block: str) -> list[str]:
    """A block's commands, continuation lines joined, comments and blank lines left out."""
    joined = re.sub(r"\\\n\s*", " ", block)
    lines = (line.strip() for line in joined.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _runnable(block: str) -> str:
    """The block as a script, with the NOT_RUN commands taken out."""
    lines = re.sub(r"\\\n\s*", " ", block).splitlines()
    kept = [line for line in lines if not any(line.strip().startswith(c) for c in NOT_RUN)]
    return "\n".join(kept) + "\n"


def test_readme_shell_blocks_are_found_and_none_is_left_out_silently():
    commands = [c for block in SHELL_BLOCKS for c in _commands(block)]
    assert len(SHELL_BLOCKS) >= 5 and len(commands) >= 15, commands
    skipped = {c.split()[0] + " " + c.split()[1] for c in commands if c.startswith("make test")}
    assert skipped == {"make test"}  # the only make target not run
    for command in (c for c in commands if not c.startswith(tuple(NOT_RUN))):
        # no placeholders: a command with "..." or <...> cannot run as written
        assert "..." not in command and not re.search(r"<[a-z_ -]+>", command), command


def test_every_readme_shell_command_runs_as_written(tmp_path):
    repo = tmp_path / "bria-dagster"
    shutil.copytree(REPO, repo, ignore=IGNORED)
    user_env = tmp_path / "user-venv"
    venv.EnvBuilder(with_pip=True).create(user_env)
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"FAL_KEY", "DAGSTER_HOME", "PYTHONPATH", "VIRTUAL_ENV", "MAKEFLAGS"}
        and not key.startswith(("PYTEST_", "MAKE"))
    }
    env.update(
        PATH=f"{user_env / 'bin'}{os.pathsep}{_path_without_this_venv()}",
        VIRTUAL_ENV=str(user_env),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_COMPILE="1",  # as the Makefile installs: bytecode only for what is imported
    )
    for number, block in enumerate(SHELL_BLOCKS, start=1):
        script = "set -eo pipefail\n" + _runnable(block)
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, (
            f"README shell block #{number} failed (exit {done.returncode}):\n{block}\n"
            f"--- stdout (tail)\n{done.stdout[-4000:]}\n--- stderr (tail)\n{done.stderr[-4000:]}"
        )


def _path_without_this_venv() -> str:
    """PATH without the test suite's own venv: the reader has only what the README installs."""
    own = Path(sys.prefix) / "bin"
    return os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p) != own
    )
