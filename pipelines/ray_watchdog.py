"""Ends the local Ray a job started when the job's process ends, however it ends.

Ray ties its head processes (GCS, raylet, dashboard, monitors) to the process that called
``ray.init`` with ``PR_SET_PDEATHSIG``, but not what the raylet starts: after a SIGKILL of a
``winnow score`` driver (measured on this project's 2-core box) the workers were gone within 5 s
while the dashboard and runtime-env agents were still running 40 s later (they keep trying to
report the raylet's death to the dead GCS, for 60 s each).

So a job that starts its own Ray first starts this watchdog: a separate process, in a session
of its own (Ctrl-C in the terminal does not reach it), running this file with the interpreter's
standard library only. It waits on a pipe whose other end only the job holds, which reaches
end-of-file when the job closes it or dies, whatever killed it (the kernel closes a dead
process's files). Meanwhile, every half second, it notes the job's Ray processes: the job's
children whose environment carries the job's token (``WINNOW_RAY_OWNER=<token>``, put into the
environment just for ``ray.init``; the GCS, raylet, dashboard and monitors) and all their
descendants (agents and workers, which Ray renames with ``setproctitle``, which can overwrite
the environment the kernel shows for them). Other children of the job are never touched.

At end-of-file it kills those it noted that still run (the same pid and start time), every
process that still shows the token, and their descendants, until it finds none three times in
a row, and exits. A job that ends normally writes ``done`` and closes the pipe after
``ray.shutdown()``; the watchdog then removes stragglers, if any, and exits at once.

Linux only (it reads ``/proc/<pid>/environ``); elsewhere the job runs without it.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

__all__ = ["TOKEN_VARIABLE", "Watchdog", "supported"]

TOKEN_VARIABLE = "WINNOW_RAY_OWNER"
_NOTE_S = 0.5  # between notes of the job's Ray processes while the job runs
_SCAN_S = 0.2  # between scans while sweeping
_QUIET_SCANS = 3  # empty scans in a row that end the sweep
_SWEEP_LIMIT_S = 60.0  # a sweep never runs longer (a process that cannot be killed)
_DONE = b"done"


def supported() -> bool:
    return sys.platform.startswith("linux") and os.path.isdir("/proc/self")


def _processes() -> dict[int, tuple[int, int]]:
    """``{pid: (parent pid, start time)}`` of every live (not zombie) process, from /proc."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()  # after "pid (comm) "
        if fields[0] not in (b"Z", b"X"):
            table[int(name)] = (int(fields[1]), int(fields[19]))
    return table


def _has(pid: int, entry: bytes) -> bool:
    """Whether ``pid``'s environment (as the kernel shows it) holds ``entry``."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return entry in fh.read().split(b"\0")
    except OSError:  # gone, or another user's process
        return False


def _descendants(roots: set[int], table: dict[int, tuple[int, int]]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, todo = set(), list(roots)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _job_ray(job: int, entry: bytes, table: dict[int, tuple[int, int]]) -> set[int]:
    """The job's children that carry ``entry``, and all their descendants."""
    roots = {pid for pid, (parent, _) in table.items() if parent == job and _has(pid, entry)}
    return roots | _descendants(roots, table)


def _targets(job: int, entry: bytes, noted: dict[int, int]) -> set[int]:
    """What to kill now: noted processes that still run, processes showing ``entry``, and the
    descendants of both; never the job itself or this process."""
    table = _processes()
    roots = {pid for pid, start in noted.items() if table.get(pid, (0, -1))[1] == start}
    roots |= {pid for pid in table if _has(pid, entry)}
    return (roots | _descendants(roots, table)) - {job, os.getpid()}


def _sweep(job: int, entry: bytes, noted: dict[int, int], quiet_scans: int) -> None:
    """SIGKILL the targets until none is found ``quiet_scans`` times in a row (a raylet that
    is being killed may still start a worker between two scans)."""
    quiet, deadline = 0, time.monotonic() + _SWEEP_LIMIT_S
    while time.monotonic() < deadline:
        pids = _targets(job, entry, noted)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        quiet = 0 if pids else quiet + 1
        if quiet >= quiet_scans:
            return
        time.sleep(_SCAN_S)


class Watchdog:
    """The job's side: ``Watchdog.start()`` before ``ray.init`` (with ``token_in_environ()``
    around it), ``close()`` after ``ray.shutdown()``; if the job dies instead, the watchdog
    sweeps on its own."""

    def __init__(self, proc: subprocess.Popen, token: str) -> None:
        self._proc, self.token = proc, token

    @classmethod
    def start(cls) -> Watchdog:
        token = f"{os.getpid()}-{uuid.uuid4().hex}"
        # -I -S: no user site or PYTHON* variables, no site-packages: this file needs only the
        # standard library and starts in tens of milliseconds.
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__), str(os.getpid()), token],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        return cls(proc, token)

    @contextlib.contextmanager
    def token_in_environ(self) -> Iterator[None]:
        """The token in ``os.environ`` for the duration (for ``ray.init``), then as before."""
        before = os.environ.get(TOKEN_VARIABLE)
        os.environ[TOKEN_VARIABLE] = self.token
        try:
            yield
        finally:
            if before is None:
                del os.environ[TOKEN_VARIABLE]
            else:
                os.environ[TOKEN_VARIABLE] = before

    def close(self) -> None:
        """Tell the watchdog Ray was shut down: it removes stragglers, if any, and exits."""
        try:
            self._proc.stdin.write(_DONE)
            self._proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            self._proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            pass  # still sweeping; it exits on its own


def _main(argv: list[str]) -> int:
    job, token = int(argv[0]), argv[1]
    entry = f"{TOKEN_VARIABLE}={token}".encode()
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # the terminal's signals are for the job, not us
    noted: dict[int, int] = {}  # pid -> start time of the job's Ray processes seen so far
    said, stdin = b"", sys.stdin.fileno()
    while True:
        ready, _, _ = select.select([stdin], [], [], _NOTE_S)
        if ready:
            data = os.read(stdin, 64)
            if not data:  # end-of-file: the job closed the pipe or died
                break
            said += data
            continue
        table = _processes()
        noted.update((pid, table[pid][1]) for pid in _job_ray(job, entry, table))
    _sweep(job, entry, noted, 1 if said == _DONE else _QUIET_SCANS)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
