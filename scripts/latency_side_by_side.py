"""Time several exported models side by side (interleaved rounds) on ONNX Runtime / OpenVINO.

    python scripts/latency_side_by_side.py --threads 2 --runs 200 NAME=model.onnx NAME2=model.xml ...

An OpenVINO model runs in fp32 (``INFERENCE_PRECISION_HINT=f32``) unless named ``NAME=model.xml@bf16``
(or ``@f16``): the CPU plugin's inference precision.

Each model runs on a grey letterboxed batch of its own static input shape and type (float32, or
uint8 for a ``--uint8-input`` export; inference only: no
pre/post-processing); figures are median / p90 ms with the background load measured per model
(litedet.bench.harness.measure_interleaved). The last column is the first model's time over each
model's, taken round by round (litedet.bench.harness.paired_ratio: median of the rounds' own
ratios; a machine whose speed changes between stretches of seconds moves both alike). Prints one
markdown table and writes JSON to --out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from litedet.bench.harness import measure_interleaved, paired_ratio


def open_model(path: Path, threads: int, precision: str = "f32"):
    """A callable running one inference of ``path`` on a fixed input, and the input shape."""
    if path.suffix == ".xml":
        import openvino as ov

        from litedet.runtime.openvino_backend import compile_properties

        core = ov.Core()
        model = core.read_model(str(path))
        litedet_precision = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}[precision]
        compiled = core.compile_model(model, "CPU", compile_properties(litedet_precision, threads))
        shape = [int(d) for d in compiled.input(0).shape]
        uint8 = compiled.input(0).get_element_type() == ov.Type.u8  # a --uint8-input export
        x = np.full(shape, 114, np.uint8) if uint8 else np.full(shape, 114 / 255, np.float32)
        request = compiled.create_infer_request()
        return (lambda: request.infer({0: x})), shape
    import onnxruntime as ort

    from litedet.runtime.onnxruntime_backend import session_options

    session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    uint8 = inp.type == "tensor(uint8)"  # a --uint8-input export
    x = np.full(shape, 114, np.uint8) if uint8 else np.full(shape, 114 / 255, np.float32)
    return (lambda: session.run(None, {inp.name: x})), shape


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="NAME=PATH (.onnx or OpenVINO .xml)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--budget", type=float, default=None, help="seconds for all models together")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    calls, shapes, paths = {}, {}, {}
    for item in args.models:
        name, _, path = item.partition("=")
        path, _, precision = path.partition("@")
        if not path:
            parser.error(f"{item!r}: expected NAME=PATH")
        if not Path(path).exists():
            parser.error(f"{path}: no such model file")
        if precision and (Path(path).suffix != ".xml" or precision not in ("f32", "bf16", "f16")):
            parser.error(f"{item!r}: @f32/@bf16/@f16 applies to OpenVINO .xml models only")
        calls[name], shapes[name] = open_model(Path(path), args.threads, precision or "f32")
        paths[name] = path
    stats = measure_interleaved(calls, warmup=20, min_runs=args.runs, budget_s=args.budget)
    first = next(iter(stats))
    rows = []
    print(f"| model | input | median ms | p90 ms | runs | other load % | {first} / model (p10-p90) |\n"
          "|---|---|---|---|---|---|---|")
    for name, s in stats.items():
        load = "-" if s.other_load is None else f"{s.other_load:.0f}"
        shape = shapes[name]
        hw = shape[1:3] if shape[-1] == 3 and shape[1] != 3 else shape[2:]  # NHWC (uint8 export) or NCHW
        ratio = paired_ratio(stats[first].rounds, s.rounds)
        text = "-" if ratio is None else f"{ratio['ratio']:.2f}x ({ratio['low']:.2f}-{ratio['high']:.2f})"
        print(f"| {name} | {'x'.join(map(str, hw))} | {s.median_ms:.2f} | {s.p90_ms:.2f} | {s.n} | {load} | {text} |")
        rows.append({"name": name, "path": paths[name], "shape": shapes[name], "threads": args.threads,
                     "median_ms": s.median_ms, "p90_ms": s.p90_ms, "runs": s.n, "other_load": s.other_load,
                     "ratio_to_first": ratio})
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
