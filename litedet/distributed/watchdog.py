"""Stop the processes of a local Ray cluster as soon as the driver that started it is gone.

Ray's own reaper stops the GCS and the raylet within a fraction of a second of a SIGKILLed driver,
but its dashboard and runtime-env agents first try to report the raylet's death to the (already
dead) GCS with a 60 s timeout, holding their listening sockets meanwhile. This watchdog closes that
gap: the driver starts it with a pipe on its stdin and the pids of the processes ``ray.init``
started; it keeps a record of those processes and all their descendants, and when the pipe closes
(the driver exited or was killed: the kernel closes the pipe either way) it sends SIGTERM to every
recorded process still alive, then SIGKILL after a grace period. A pid is matched together with its
start time, so a reused pid is never signalled.

Run as ``python -m litedet.distributed.watchdog PID:START_TIME ...``; see ``cluster.start_local_ray``.
"""

from __future__ import annotations

import select
import signal
import subprocess
import sys

import psutil

POLL_S = 0.5
GRACE_S = 0.5  # the cluster is already dead: its agents have nothing left to finish

__all__ = ["spawn_watchdog"]


def spawn_watchdog(roots: list[psutil.Process]) -> subprocess.Popen:
    """Start the watchdog over ``roots`` and their descendants; closing (or losing) its stdin ends
    them. Keep the returned handle: its stdin is the driver's end of the pipe."""
    args = [f"{p.pid}:{p.create_time()!r}" for p in roots]
    return subprocess.Popen(
        [sys.executable, "-m", "litedet.distributed.watchdog", *args],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C at the terminal is the driver's to handle, not ours
    )


def _same(pid: int, created: float) -> psutil.Process | None:
    try:
        proc = psutil.Process(pid)
        return proc if proc.create_time() == created else None
    except psutil.Error:
        return None


def _record(known: dict[int, float], roots: list[tuple[int, float]]) -> None:
    for pid, created in roots:
        proc = _same(pid, created)
        if proc is None:
            continue
        try:
            for child in proc.children(recursive=True):
                known.setdefault(child.pid, child.create_time())
        except psutil.Error:
            continue


def _stop(known: dict[int, float]) -> None:
    alive = [p for p in (_same(pid, created) for pid, created in known.items()) if p is not None]
    for proc in alive:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, still = psutil.wait_procs(alive, timeout=GRACE_S)
    for proc in still:
        try:
            proc.kill()
        except psutil.Error:
            pass


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    roots = [(int(pid), float(created)) for pid, created in (arg.split(":", 1) for arg in argv)]
    known = dict(roots)
    while True:
        _record(known, roots)
        ready, _, _ = select.select([sys.stdin], [], [], POLL_S)
        if ready and not sys.stdin.buffer.read1(4096):  # EOF: the driver is gone or done
            break
    _stop(known)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
