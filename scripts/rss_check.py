"""Resident memory of a long `litedet detect` / `litedet stream` run: flat, or growing per frame?

Makes a long video by looping the frames of a short one (default: the shared pets video, looped
to 10,000 frames, written once to ``runs/rss/``), runs each asked-for mode as a child process and
samples its RSS (``/proc/PID/status`` VmRSS) with the number of frames done so far:

    detect       litedet detect --json             (frames counted from the JSON Lines on stdout)
    detect-save  litedet detect --save DIR         (frames counted from DIR/detections.jsonl)
    stream       litedet stream --save DIR         (one in-process worker; same counting)

Reports, per mode, RSS after ``--warmup`` frames ("start"), at the last sample ("end"), the most
seen and the least-squares slope in kB per 1,000 frames after warm-up; writes them to
``runs/rss/rss.json`` and ``runs/rss/rss.md``. Exits 1 when any mode's end differs from its start by
more than ``--tolerance-mb`` (default 20 MB).

    python scripts/rss_check.py --weights runs/v5lite-e.onnx --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LITEDET_SHARED", REPO.parent / "shared"))
PETS = SHARED / "data" / "video" / "pets2009_vtest_480x360.mp4"
MODES = ("detect", "detect-save", "stream")


def long_video(source: Path, frames: int, out_dir: Path) -> Path:
    """``source`` looped to ``frames`` frames (mp4v), made once and reused."""
    path = out_dir / f"{source.stem}_x{frames}.mp4"
    if path.is_file() and _frame_count(path) >= frames:
        return path
    capture = cv2.VideoCapture(str(source))
    if not capture.isOpened():
        raise SystemExit(f"rss_check: cannot read {source} (set LITEDET_SHARED or pass --video)")
    loop = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        loop.append(image)
    capture.release()
    height, width = loop[0].shape[:2]
    tmp = path.with_suffix(".part.mp4")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), 25, (width, height))
    for index in range(frames):
        writer.write(loop[index % len(loop)])
    writer.release()
    tmp.replace(path)
    return path


def _frame_count(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    try:
        return int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    finally:
        capture.release()


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def run_mode(mode: str, video: Path, weights: str, threads: int, out_dir: Path, interval: float) -> list[tuple[float, int, float]]:
    """Run one mode to the end; returns samples (seconds, frames done, RSS MB)."""
    save = out_dir / mode
    base = [sys.executable, "-m", "litedet"]
    if mode == "detect":
        command = [*base, "detect", "--weights", weights, "--source", str(video), "--json", "--no-progress", "--threads", str(threads)]
    elif mode == "detect-save":
        command = [*base, "detect", "--weights", weights, "--source", str(video), "--save", str(save), "--no-progress",
                   "--threads", str(threads)]
    else:
        command = [*base, "stream", "--weights", weights, "--source", str(video), "--save", str(save), "--no-progress",
                   "--workers", "1", "--threads-per-worker", str(threads)]
    results = save / "detections.jsonl"
    if results.exists():
        results.unlink()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO)
    counted = [0]

    def count_stdout() -> None:
        assert child.stdout is not None
        for _ in child.stdout:
            counted[0] += 1

    def frames_done() -> int:
        if mode == "detect":
            return counted[0]
        try:
            with open(results, "rb") as file:
                return sum(chunk.count(b"\n") for chunk in iter(lambda: file.read(1 << 20), b""))
        except FileNotFoundError:
            return 0

    reader = threading.Thread(target=count_stdout, daemon=True)
    reader.start()
    stderr_lines: list[bytes] = []
    threading.Thread(target=lambda: stderr_lines.extend(child.stderr), daemon=True).start()  # type: ignore[arg-type]
    samples = []
    start = time.monotonic()
    while child.poll() is None:
        rss = rss_mb(child.pid)
        if rss is not None:
            samples.append((time.monotonic() - start, frames_done(), rss))
        time.sleep(interval)
    reader.join(timeout=5)
    if child.returncode != 0:
        tail = b"".join(stderr_lines[-20:]).decode(errors="replace")
        raise SystemExit(f"rss_check: {mode} exited with {child.returncode}:\n{tail}")
    samples.append((time.monotonic() - start, frames_done(), samples[-1][2] if samples else float("nan")))
    return samples


def summarise(mode: str, samples: list[tuple[float, int, float]], warmup: int) -> dict[str, float | int | str]:
    rows = [s for s in samples[:-1] if s[1] >= warmup] or samples[:-1]
    frames = np.array([s[1] for s in rows], dtype=np.float64)
    rss = np.array([s[2] for s in rows])
    slope = float(np.polyfit(frames, rss, 1)[0] * 1000 * 1024) if len(rows) > 2 and np.ptp(frames) > 0 else float("nan")
    return {
        "mode": mode, "frames": int(samples[-1][1]), "seconds": round(samples[-1][0], 1),
        "start_frame": int(rows[0][1]), "rss_start_mb": round(float(rss[0]), 1), "rss_end_mb": round(float(rss[-1]), 1),
        "rss_max_mb": round(float(rss.max()), 1), "growth_mb": round(float(rss[-1] - rss[0]), 1),
        "slope_kb_per_1000_frames": round(slope, 1), "samples": len(rows),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="model for litedet detect/stream (.onnx, .xml, .param, .safetensors)")
    parser.add_argument("--video", type=Path, default=PETS, help="video to loop (default: the shared pets video)")
    parser.add_argument("--frames", type=int, default=10_000, help="frames in the looped video (default 10000)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--threads", type=int, default=2, help="engine threads (default 2)")
    parser.add_argument("--warmup", type=int, default=500, help="frames before the start figure (default 500)")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between samples (default 0.5)")
    parser.add_argument("--tolerance-mb", type=float, default=20.0, help="allowed end - start (default 20 MB)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "rss", help="output folder (default runs/rss)")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; choose from {', '.join(MODES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    video = long_video(args.video, args.frames, args.out)
    print(f"video: {video} ({_frame_count(video)} frames); weights {args.weights}; {args.threads} thread(s)", flush=True)
    load = os.getloadavg()
    rows = []
    for mode in modes:
        samples = run_mode(mode, video, args.weights, args.threads, args.out, args.interval)
        rows.append(summarise(mode, samples, args.warmup))
        print(json.dumps(rows[-1]), flush=True)
        (args.out / f"samples_{mode}.json").write_text(json.dumps(samples))
    header = "| mode | frames | RSS at frame | start MB | end MB | max MB | end - start MB | slope kB/1000 frames |"
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['mode']} | {row['frames']} | {row['start_frame']} | {row['rss_start_mb']} | {row['rss_end_mb']} | "
                     f"{row['rss_max_mb']} | {row['growth_mb']} | {row['slope_kb_per_1000_frames']} |")
    lines.append(f"\nload average at start {load[0]:.1f}, at end {os.getloadavg()[0]:.1f} (other processes)")
    (args.out / "rss.md").write_text("\n".join(lines) + "\n")
    (args.out / "rss.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n".join(lines))
    return 0 if all(abs(row["growth_mb"]) <= args.tolerance_mb for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
