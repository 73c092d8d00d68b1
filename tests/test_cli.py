"""The installed ``lasnn`` command: --version, and --help for every verb, run as a user would.

Every process pays Python + torch start-up, so the console script itself runs three times and the
per-verb help runs in one further interpreter that calls ``lasnn.cli.main`` once per verb.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lasnn

VERBS = ("teach", "distill", "convert", "export", "simulate", "report", "demo")
REPO = Path(__file__).resolve().parents[1]

# Runs ``lasnn VERB --help`` for each verb through the CLI's real entry point, capturing what a user sees.
_HELP_ALL = """
import contextlib, io, json, sys
from lasnn.cli import main
results = {}
for verb in sys.argv[1:]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([verb, "--help"])
        except SystemExit as stop:
            code = stop.code
    results[verb] = [code, out.getvalue(), err.getvalue()]
print(json.dumps(results))
"""


def _command() -> list[str]:
    """The console script beside this interpreter (the venv's), else the module."""
    script = Path(sys.executable).with_name("lasnn")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "lasnn.cli"]


def _run_all(commands: list[list[str]]) -> list[subprocess.CompletedProcess]:
    """Start every command at once and collect them in order."""
    env = {**os.environ, "COLUMNS": "100"}
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    processes = [subprocess.Popen(command, cwd=REPO, env=env, **pipes) for command in commands]
    results = []
    for command, process in zip(commands, processes, strict=True):
        stdout, stderr = process.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(command, process.returncode, stdout, stderr))
    return results


def test_version_help_and_every_verb_help() -> None:
    lasnn_cmd = _command()
    version, top_help, bare, per_verb = _run_all(
        [
            [*lasnn_cmd, "--version"],
            [*lasnn_cmd, "--help"],
            lasnn_cmd,
            [sys.executable, "-c", _HELP_ALL, *VERBS],
        ]
    )
    assert version.returncode == 0, version.stderr[-2000:]
    assert version.stdout.strip() == f"lasnn {lasnn.__version__}"
    assert top_help.returncode == 0, top_help.stderr[-2000:]
    assert top_help.stdout.startswith("usage: lasnn")
    for verb in VERBS:
        assert verb in top_help.stdout
    assert bare.returncode == 2 and bare.stdout.startswith("usage: lasnn")  # no verb: help, usage error
    assert per_verb.returncode == 0, per_verb.stderr[-2000:]
    results = json.loads(per_verb.stdout.strip().splitlines()[-1])
    for verb in VERBS:
        code, stdout, stderr = results[verb]
        assert code == 0, f"lasnn {verb} --help exited {code}: {stderr[-2000:]}"
        assert stdout.startswith(f"usage: lasnn {verb}"), stdout[:200]
