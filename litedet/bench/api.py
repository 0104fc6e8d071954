"""The benchmark's Python API: everything ``litedet bench`` does, callable from code.

    from litedet.bench.api import run_benchmark, run_guidelines
    rows = run_benchmark(models="v5lite-e", engines="onnxruntime,ncnn", threads="1,2", imgsz=320,
                         peers="yolov8n,v5lite-ncnn", end_to_end=True, out_dir="runs/bench")

Torch and the engines are imported only when a function runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def run_benchmark(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """Rows of a benchmark run (``litedet.bench.run.benchmark`` documents the arguments)."""
    from litedet.bench.run import run_benchmark as run

    return run(*args, **kwargs)


def benchmark(*args: Any, **kwargs: Any) -> Any:
    """Rows, notes, machine and written files of a run (``litedet.bench.run.BenchmarkResult``)."""
    from litedet.bench.run import benchmark as run

    return run(*args, **kwargs)


def run_guidelines(out_dir: str | Path | None = None, **kwargs: Any) -> Any:
    """The ShuffleNetV2 G1-G4 experiments plus Focus and OSA comparisons
    (``litedet.bench.guidelines.run_guidelines``); with ``out_dir`` also writes
    ``guidelines.md`` / ``guidelines.json`` there."""
    from litedet.bench.guidelines import run_guidelines as run
    from litedet.bench.guidelines import save_guidelines

    report = run(**kwargs)
    if out_dir is not None:
        save_guidelines(report, out_dir)
    return report


def list_peers() -> list[str]:
    """Peer names accepted by ``--peers``."""
    from litedet.bench.peers import list_peers as names

    return names()


__all__ = ["benchmark", "list_peers", "run_benchmark", "run_guidelines"]
