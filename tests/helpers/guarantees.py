"""What every "nothing lost, nothing silently wrong" test asserts: the exit code, exactly one ``error:``
line naming the value and what to do, no traceback, every input byte-identical, and no output,
staging copy or lock left behind."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from typer.testing import CliRunner, Result

from embcompress.cli import app

#: Hidden entries the output guard creates beside an output (staging copies, replaced outputs, the lock).
LEFTOVER = re.compile(r"^\..*\.(tmp|old)-[0-9a-f]{8}$|^\..*\.lock$|^\.embcompress-probe-")


def invoke(*args: object) -> Result:
    """The real CLI in-process (typer's CliRunner), stderr kept apart."""
    return CliRunner().invoke(app, [str(a) for a in args])


BATCH = """
import json, sys
from typer.testing import CliRunner
from embcompress.cli import app
results = []
for args in json.loads(sys.argv[1]):
    result = CliRunner().invoke(app, args)
    results.append({"code": result.exit_code, "stderr": result.stderr})
print(json.dumps(results))
"""


def run_cli_batch(
    commands: list[list[object]], env: dict[str, str] | None = None, **popen: object
) -> list[subprocess.CompletedProcess]:
    """Several CLI invocations (CliRunner) in one fresh subprocess: its environment (``env``, resource
    limits through ``preexec_fn``) applies to all of them, and Python starts once."""
    args = json.dumps([[str(a) for a in command] for command in commands])
    proc = subprocess.run(
        [sys.executable, "-c", BATCH, args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
        **popen,  # type: ignore[arg-type]
    )
    assert proc.returncode == 0, proc.stderr
    return [
        subprocess.CompletedProcess(c, r["code"], "", r["stderr"])
        for c, r in zip(commands, json.loads(proc.stdout.splitlines()[-1]), strict=True)
    ]


def tree_hashes(*roots: Path) -> dict[str, str]:
    """SHA-256 of every file below ``roots`` (a file root hashes itself)."""
    out = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        out.update({str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files})
    return out


def error_line(code: int, stderr: str, *needles: str) -> str:
    """Assert exit code 2 and one ``error:`` line containing every needle (regex), without a traceback."""
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2, f"exit code {code}: {stderr}"
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr, stderr
    for needle in needles:
        assert re.search(needle, errors[0]), f"{needle!r} not in {errors[0]!r}"
    return errors[0]


def cli_error(result: Result | subprocess.CompletedProcess, *needles: str) -> str:
    """:func:`error_line` for a CliRunner result or a finished subprocess."""
    code = result.returncode if isinstance(result, subprocess.CompletedProcess) else result.exit_code
    return error_line(code, result.stderr, *needles)


def leftovers(*folders: Path) -> list[str]:
    """Staging copies, replaced outputs and locks the output guard left in ``folders``."""
    return sorted(str(p) for folder in folders if folder.is_dir() for p in folder.iterdir() if LEFTOVER.match(p.name))


def assert_nothing_written(outputs: Iterable[Path], before: dict[str, str], inputs: Iterable[Path]) -> None:
    """No output exists, the inputs hash as ``before``, and nothing the guard makes is left beside the outputs."""
    outputs = list(outputs)
    for out in outputs:
        assert not out.exists(), f"{out} was written"
    assert tree_hashes(*inputs) == before, "an input changed"
    assert leftovers(*{o.parent for o in outputs}) == []
