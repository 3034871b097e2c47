"""Runs `mmflow` commands as forked children of one process that imported mmflow once.

`python -m mmflow` is `sys.exit(mmflow.cli.main())`; a child forked from here runs the same
`main(argv)` in its own process, so it can be killed with SIGKILL like any command, but starts in
milliseconds instead of seconds (importing torch is most of a tiny run). The kill tests run a
dozen commands this way and stay well under a minute.

Protocol (one JSON object per line): stdin {"argv": [...], "env": {...}, "kill_after": seconds or
null} -> stdout {"rc": exit code, or -signal when killed, "output": stdout and stderr together}.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
import traceback

# import what a toy2d run needs before forking (nothing runs: no threads or device state to inherit)
import accelerate  # noqa: F401
import matplotlib.pyplot  # noqa: F401
import torch  # noqa: F401
import torch._dynamo  # noqa: F401  (the first optimizer imports it: seconds)
import torch.utils.tensorboard  # noqa: F401

import mmflow.tasks.toy2d  # noqa: F401
import mmflow.tasks.toy2d_plots  # noqa: F401
import mmflow.train.trainer  # noqa: F401
from mmflow.cli import main


def _child(argv: list[str], env: dict[str, str], out_path: str) -> None:
    os.environ.update(env)
    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
        rc = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def _run(argv: list[str], env: dict[str, str], kill_after: float | None) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".out", delete=False) as f:
        out_path = f.name
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        _child(argv, env, out_path)
    done, status = 0, 0
    if kill_after is not None:
        deadline = time.monotonic() + kill_after
        while not done and time.monotonic() < deadline:
            time.sleep(0.005)
            done, status = os.waitpid(pid, os.WNOHANG)
        if not done:
            os.kill(pid, signal.SIGKILL)  # still ours: not yet reaped
    if not done:
        _, status = os.waitpid(pid, 0)
    rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    with open(out_path, encoding="utf-8", errors="replace") as f:
        output = f.read()
    os.unlink(out_path)
    return {"rc": rc, "output": output}


if __name__ == "__main__":
    for line in sys.stdin:
        job = json.loads(line)
        print(json.dumps(_run(job["argv"], job.get("env", {}), job.get("kill_after"))), flush=True)
