"""segpipe.processes.alive on real processes: a zombie main thread whose other threads still run counts as
alive (they hold its files and sockets), a reaped or zombie process does not."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from segpipe.processes import alive

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and pthread_exit are Linux's")

# The main thread ends with pthread_exit (not the process's exit): it shows "Z" in /proc/PID/stat while
# the other thread keeps the process, and the socket it listens on, alive.
ZOMBIE_LEADER = """
import ctypes, socket, sys, threading, time
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind("\\0" + sys.argv[1])
listener.listen(1)
threading.Thread(target=time.sleep, args=(60,)).start()
print("ready", flush=True)
ctypes.CDLL(None).pthread_exit(None)
"""


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_a_process_whose_main_thread_is_a_zombie_but_another_runs_is_alive(tmp_path):
    name = f"segpipe-test-{tmp_path.name}"  # an abstract socket's name: no file to leave behind
    proc = subprocess.Popen([sys.executable, "-c", ZOMBIE_LEADER, name], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 30
        while _state(proc.pid) != "Z":
            assert time.monotonic() < deadline, "the main thread did not exit"
            time.sleep(0.01)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect("\0" + name)  # the process still holds its socket...
        assert alive(proc.pid)  # ...so it is alive, though its main thread reads "Z"
    finally:
        proc.kill()
        proc.wait()
    assert not alive(proc.pid)


def test_a_zombie_and_a_reaped_process_are_not_alive():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while alive(proc.pid):  # exited, not reaped yet: a zombie
        assert time.monotonic() < deadline, "a zombie read as alive"
        time.sleep(0.01)
    assert _state(proc.pid) == "Z"
    proc.wait()
    assert not alive(proc.pid)
