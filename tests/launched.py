"""`accelerate launch` (or any child command) from a test: a run that overstays its limit fails with the end of
its stderr, where a stalled process-group teardown prints every thread's stack (mmflow.train.trainer
TEARDOWN_DUMP_S), instead of a TimeoutExpired whose repr shows only the first line."""

from __future__ import annotations

import subprocess
from typing import Any, Sequence

import pytest


def run_launched(cmd: Sequence[str], *, timeout: float = 300, **kwargs: Any) -> subprocess.CompletedProcess:
    """subprocess.run with captured text output; on timeout, pytest.fail with the last 6000 characters of each
    stream."""
    try:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired as e:
        tails = {name: (out.decode(errors="replace") if isinstance(out, bytes) else out or "")[-6000:]
                 for name, out in (("stdout", e.stdout), ("stderr", e.stderr))}
        pytest.fail(f"{' '.join(cmd[:8])} ... ran past {timeout} s\n--- stdout tail\n{tails['stdout']}\n"
                    f"--- stderr tail\n{tails['stderr']}", pytrace=False)
