"""Real terminals and real process trees for the interrupt tests.

- `Terminal`: a command on a new pseudo-terminal that is its controlling terminal; `type_ctrl_c()`
  writes 0x03 to it, so the kernel's line discipline signals the terminal's foreground process
  group, exactly as a keyboard does; `interrupt()` types it and waits for the exit.
- `INTERRUPT_LINE`, `interrupt_lines`: the one line the CLI prints when Ctrl-C stops it.
- `children_of`, `cmdline`, `alive`, `prefect_server_of`, `servers_of`: the processes a command started, and
  the Prefect servers of a PREFECT_HOME, from /proc.
- `recorded_runs`: the flow and task runs in a Prefect database, read from its SQLite file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import sqlite3
import subprocess
import termios
import threading
import time
from pathlib import Path

from tests.faults import REPO
from segpipe.processes import alive  # noqa: F401 - re-exported for the tests (every thread of a process)


INTERRUPT_LINE = re.compile(
    r"^segpipe (?P<command>\w+): interrupted(?: during (?P<stages>[\w, -]+))?"
    r"(?P<recorded>(?:; Prefect recorded .+? as \w+)*)\. Run the same command again to resume \((?P<resume>.+)\)\.$"
)


def interrupt_lines(out: str) -> list[re.Match[str]]:
    """The interrupt lines (`INTERRUPT_LINE`) in a command's output."""
    return [m for m in map(INTERRUPT_LINE.search, out.splitlines()) if m]


class Terminal:
    """`argv` on a new pseudo-terminal that is its controlling terminal (its own session and process group,
    which is the terminal's foreground group). Everything it prints is collected in `output`."""

    def __init__(self, argv: list[str], env: dict[str, str]):
        self.master, slave = os.openpty()

        def controlling_tty() -> None:  # in the child: new session, then this pty as its terminal
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(argv, cwd=REPO, env=env, stdin=slave, stdout=slave, stderr=slave,
                                     preexec_fn=controlling_tty, close_fds=True)
        os.close(slave)
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: the terminal's last writer is gone
                return
            if not data:
                return
            self._chunks.append(data)

    @property
    def output(self) -> str:
        return b"".join(self._chunks).decode("utf-8", "replace").replace("\r\n", "\n")

    def type_ctrl_c(self) -> float:
        """Type Ctrl-C: the line discipline signals the foreground process group. Returns when."""
        t = time.monotonic()
        os.write(self.master, b"\x03")
        return t

    def interrupt(self, timeout: float = 60) -> tuple[int, float]:
        """Type Ctrl-C and wait for the command to exit: (exit status, seconds from the key to the exit)."""
        pressed = self.type_ctrl_c()
        rc = self.wait(timeout=timeout)
        return rc, time.monotonic() - pressed

    def foreground_group(self) -> int:
        return os.tcgetpgrp(self.master)

    def wait(self, timeout: float) -> int:
        """The command's exit status. The output may still be arriving: see `drain`."""
        return self.proc.wait(timeout=timeout)

    def drain(self, timeout: float = 5.0) -> str:
        """The output, once every process holding the terminal has closed it (or after `timeout`)."""
        self._reader.join(timeout=timeout)
        return self.output

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=30)
        with contextlib.suppress(OSError):
            os.close(self.master)


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def prefect_server_of(pid: int) -> int | None:
    servers = [c for c in children_of(pid) if "uvicorn" in cmdline(c)]
    return servers[0] if servers else None


def servers_of(home: Path) -> list[int]:
    """Every Prefect server process whose PREFECT_HOME is `home` (recorded in its state.json or not)."""
    from segpipe_app.cli import server

    wanted = f"PREFECT_HOME={home.resolve()}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted in environ and server.is_prefect_server(int(proc.name)):
            pids.append(int(proc.name))
    return pids


def recorded_runs(prefect_home: Path) -> dict[str, list[tuple[str, str]]]:
    """(name, state) of every flow run and task run in the Prefect database, read from SQLite itself."""
    with contextlib.closing(sqlite3.connect(prefect_home / "prefect.db")) as db:
        flows = db.execute(
            "select flow.name, flow_run.state_name from flow_run join flow on flow.id = flow_run.flow_id"
        ).fetchall()
        tasks = db.execute("select name, state_name from task_run").fetchall()
    return {"flows": flows, "tasks": [(name.rsplit("-", 1)[0], state) for name, state in tasks]}
