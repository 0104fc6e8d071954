"""Measure what a local Ray started by `run_stream(workers=2)` leaves behind when its driver ends.

Starts a driver process that streams SOURCE with 2 Ray workers, records every process under it
and their listening sockets once the workers are up, ends the driver (normal exit after 30 frames,
SIGTERM, SIGINT or SIGKILL) and polls (every 0.2 s) until the last of those processes is gone.
Prints one JSON line: listeners not on loopback, the driver's exit status, and seconds from the
signal until the driver exited and until every Ray process was gone.

    python scripts/ray_orphans.py KILL WEIGHTS SOURCE     # also: none, TERM, INT
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import psutil

LOOPBACK = ("127.0.0.1", "::ffff:127.0.0.1", "::1")


def driver(weights: str, source: str, frames: int) -> None:
    """Stream SOURCE with 2 Ray workers; print one JSON line with the Ray processes and their
    listening sockets once the workers are up, and one with the frames done at the end (the
    tests run this too)."""
    from litedet.distributed.stream import run_stream

    def on_start(pool) -> None:
        procs = psutil.Process().children(recursive=True)
        listening = []
        for proc in procs:
            try:
                listening += [[proc.pid, c.laddr.ip, c.laddr.port] for c in proc.net_connections(kind="inet")
                              if c.status == psutil.CONN_LISTEN]
            except psutil.Error:
                pass
        print(json.dumps({"pids": [p.pid for p in procs], "listening": listening}), flush=True)

    report = run_stream(source, weights, workers=2, on_start=on_start, keep_results=False, max_frames=frames)
    print(json.dumps({"done": report.frames_done}), flush=True)


def alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.Error:
            pass
    return out


def main(how: str, weights: str, source: str) -> None:
    signum = {"none": None, "TERM": signal.SIGTERM, "INT": signal.SIGINT, "KILL": signal.SIGKILL}[how]
    frames = 30 if signum is None else 10**6
    child = subprocess.Popen([sys.executable, __file__, "--driver", weights, source, str(frames)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    started = json.loads(child.stdout.readline())
    time.sleep(1.0)
    t0 = time.time()
    if signum is not None:
        child.send_signal(signum)
    code = child.wait(timeout=300)
    exited = time.time() - t0
    gone = None
    while time.time() - t0 < 120:
        if not alive(started["pids"]):
            gone = time.time() - t0
            break
        time.sleep(0.2)
    print(json.dumps({
        "end": how, "ray_processes": len(started["pids"]), "listening": len(started["listening"]),
        "not_loopback": [s for s in started["listening"] if s[1] not in LOOPBACK], "exit_status": code,
        "driver_exit_s": round(exited, 2), "all_gone_s": None if gone is None else round(gone, 2),
        "left": alive(started["pids"]), "load": list(psutil.getloadavg()),
    }))


if __name__ == "__main__":
    if sys.argv[1] == "--driver":
        driver(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main(*sys.argv[1:4])
