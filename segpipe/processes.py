"""Whether a process is still alive, for the helpers segpipe starts and stops (the model host, the background
Prefect server).

`alive(pid)` looks at every thread of the process, not only its main one. When a multi-threaded process
ends, its main thread can show "Z" (zombie) in `/proc/PID/stat` while its other threads are still exiting
and still hold its open files and sockets; reading only the main thread, a stopped model host looked gone
while its socket still took connections. No Prefect and no TensorFlow here.
"""

from __future__ import annotations

import os
from pathlib import Path

_PROC = Path("/proc")


def alive(pid: int) -> bool:
    """The process exists and one of its threads is not a zombie (without /proc: the process exists)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: it exists
    if not (_PROC / "self").is_dir():
        return True
    try:
        threads = os.listdir(_PROC / str(pid) / "task")
    except OSError:
        return False  # gone since kill(0)
    for tid in threads:
        try:
            stat = (_PROC / str(pid) / "task" / tid / "stat").read_text()
        except OSError:
            continue  # that thread is gone
        if stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X"):
            return True
    return False
