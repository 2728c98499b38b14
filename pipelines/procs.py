"""Child processes that die with their parent (Linux ``PR_SET_PDEATHSIG``).

One implementation for every child this project starts: `vlrepro serve`'s services (`infra/local_stack.py`) and
every ffmpeg run (`pipelines/ffmpeg.py`). It lives in pipelines/, the lowest layer that starts processes, so that
both can use it (pipelines/ must not import infra/).
"""

from __future__ import annotations

import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

#: Runs first in the child: asks the kernel for the death signal when this process (its parent) dies, exits if that
#: already happened, then execs the real command. The death signal survives ``execve``. A launcher instead of
#: ``preexec_fn`` because forking a process that holds threads (Prefect's client, ingest's decode pool) must not run
#: Python before exec. Note that the kernel sends the signal when the *thread* that started the child exits: every
#: caller here waits for its child in the thread that started it.
_LAUNCHER = (
    "import ctypes, os, sys\n"
    "ppid, sig = int(sys.argv[1]), int(sys.argv[2])\n"
    "if sys.platform.startswith('linux'):\n"
    f"    ctypes.CDLL(None).prctl({PR_SET_PDEATHSIG}, sig)\n"
    "if os.getppid() != ppid:\n"
    "    sys.exit(0)\n"
    "os.execvp(sys.argv[3], sys.argv[3:])\n"
)


def with_parent_death_signal(argv: list[str], sig: int = int(signal.SIGTERM)) -> list[str]:
    """`argv` wrapped so the child gets `sig` if this process dies without stopping it (Linux; best effort).

    ``argv[0]`` is looked up on ``PATH`` when it has no slash. Costs one ``python -S`` start (~20 ms) per child.
    """
    return [sys.executable, "-S", "-c", _LAUNCHER, str(os.getpid()), str(int(sig)), *argv]
