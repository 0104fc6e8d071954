"""GPU readiness check: latency / throughput of v5lite-e, v5lite-s and yolov8n on one CUDA GPU, and a
short CUDA training run. Started by ``scripts/gpu_check.sh OUT_DIR``; writes ``OUT_DIR/gpu_check.md``
and ``OUT_DIR/gpu_check.json``.

Nothing is downloaded: litedet models come from the registry (random weights, or the imported
weights when ``--weights NAME=PATH.safetensors`` is given), yolov8n from ultralytics' bundled
``yolov8n.yaml`` (random weights; skipped when ultralytics is absent). Random weights time the
same as trained ones. Every section has a time budget so the whole run stays under ``--budget``
seconds (default 420 s, 7 minutes).

Modes per model and batch (1 and 64): torch eager fp32 and fp16, a CUDA graph replay of the fp16
model (``torch.cuda.CUDAGraph``: one launch for the whole network), and ONNX Runtime's CUDA
provider when the installed onnxruntime has it (``onnxruntime-gpu``). Latency is the median of
synchronised calls (``torch.cuda.synchronize`` after each); throughput = batch / median.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

MODELS = (("v5lite-e", 320), ("v5lite-s", 416), ("yolov8n", 320), ("yolov8n", 416))
BATCHES = (1, 64)


class Budget:
    """Seconds left for the whole check; sections ask before starting."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.perf_counter() + seconds

    def left(self) -> float:
        return self.deadline - time.perf_counter()


def build_model(name: str, weights: dict[str, str]) -> torch.nn.Module:
    """A litedet registry model (imported weights when given) or ultralytics yolov8n from its yaml."""
    if name.startswith("yolov8"):
        from ultralytics.nn.tasks import DetectionModel

        return DetectionModel(f"{name}.yaml", verbose=False)
    if name in weights:
        from litedet.models.checkpoint import load_detector

        model, _ = load_detector(Path(weights[name]), model_name=name)
        return model
    from litedet.models import create_model

    return create_model(name)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_calls(fn: Callable[[], Any], runs: int, warmup: int, seconds: float, device: str = "cuda") -> dict[str, float]:
    """Median / p90 ms of ``fn`` with a CUDA sync after each call; stops early after ``seconds``."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < runs and (len(times) < 5 or time.perf_counter() - start < seconds):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {"median_ms": statistics.median(times), "p90_ms": times[min(len(times) - 1, int(0.9 * len(times)))], "n": len(times)}


def cuda_graph_call(model: torch.nn.Module, example: torch.Tensor) -> Callable[[], Any]:
    """Capture ``model(example)`` once (side stream warm-up, as the CUDA graphs docs do); replay it."""
    static_input = example.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(3):
            model(static_input)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        model(static_input)
    return graph.replay


def onnxruntime_cuda_call(model: torch.nn.Module, example: torch.Tensor, workdir: Path) -> Callable[[], Any] | None:
    """An ONNX Runtime CUDA session on a dynamic-batch ONNX export, or None without the provider."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return None
    path = workdir / f"model_{id(model)}.onnx"
    if not path.is_file():  # exported once per model (dynamic batch), then reused for batch 64
        torch.onnx.export(model, example[:1], str(path), opset_version=17,
                          input_names=["images"], dynamic_axes={"images": {0: "batch"}}, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"])
    if session.get_providers()[0] != "CUDAExecutionProvider":
        return None
    feed = {"images": example.float().cpu().numpy()}
    return lambda: session.run(None, feed)


def inference_section(models: list[tuple[str, int]], batches: list[int], weights: dict[str, str], budget: Budget,
                      workdir: Path, progress: Callable[[str], None], device: str = "cuda") -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    reserve = min(150.0, budget.left() / 3)  # left for training
    per_model = max(2.0, (budget.left() - reserve) / len(models))
    cuda = device.startswith("cuda")
    for name, size in models:
        if budget.left() < reserve:
            progress(f"skip {name}@{size}: time budget")
            continue
        try:
            base = build_model(name, weights).eval()
        except ImportError as err:
            progress(f"skip {name}: {err}")
            continue
        start = time.perf_counter()
        per_mode = per_model / (len(batches) * 4)
        for batch in batches:
            example = torch.rand(batch, 3, size, size, device=device)
            with torch.inference_mode():
                model = base.float().to(device)  # .float() / .half() convert in place
                rows.append(_row(name, size, batch, "torch eager fp32", time_calls(lambda: model(example), 200, 5, per_mode, device)))
                if not cuda:  # a CPU smoke run (tests): fp32 eager only
                    continue
                model = base.half()
                example_half = example.half()
                rows.append(_row(name, size, batch, "torch eager fp16", time_calls(lambda: model(example_half), 200, 5, per_mode)))
            try:
                replay = cuda_graph_call(model, example_half)
                rows.append(_row(name, size, batch, "CUDA graph fp16", time_calls(replay, 500, 5, per_mode)))
            except RuntimeError as err:
                progress(f"{name} batch {batch}: CUDA graph capture failed: {err}")
            session = onnxruntime_cuda_call(base.float(), example, workdir)
            if session is not None:
                rows.append(_row(name, size, batch, "onnxruntime CUDA fp32", time_calls(session, 200, 5, per_mode)))
        progress(f"{name}@{size}: {time.perf_counter() - start:.0f} s")
    return rows


def _row(name: str, size: int, batch: int, mode: str, stats: dict[str, float]) -> dict[str, Any]:
    return {"model": name, "imgsz": size, "batch": batch, "mode": mode, **stats,
            "images_per_s": batch * 1e3 / stats["median_ms"]}


def training_section(models: list[tuple[str, int]], batch: int, budget: Budget, seconds: float,
                     progress: Callable[[str], None], device: str = "cuda") -> list[dict[str, Any]]:
    """A short training run per litedet model on synthetic images and boxes (AMP, SGD): images/s."""
    from litedet.engine.loss import YoloLoss
    from litedet.models import create_model

    rows = []
    cuda = device.startswith("cuda")
    for name, size in [(n, s) for n, s in models if not n.startswith("yolov8")]:
        if budget.left() < 20:
            progress(f"skip training {name}: time budget")
            continue
        model = create_model(name).to(device).train()
        loss_fn = YoloLoss(model.config.num_classes, model.strides, model.anchors, imgsz=size).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.937, nesterov=True)
        scaler = torch.amp.GradScaler(device.split(":")[0], enabled=cuda)
        generator = torch.Generator(device=device).manual_seed(0)
        images = torch.rand(batch, 3, size, size, device=device, generator=generator)
        # 4 boxes per image: (image index, class, cx, cy, w, h), normalised.
        count = 4 * batch
        targets = torch.cat([
            torch.arange(batch, device=device).repeat_interleave(4)[:, None].float(),
            torch.randint(0, model.config.num_classes, (count, 1), device=device, generator=generator).float(),
            0.2 + 0.6 * torch.rand(count, 2, device=device, generator=generator),
            0.05 + 0.3 * torch.rand(count, 2, device=device, generator=generator),
        ], dim=1)
        steps, losses = 0, []
        deadline = time.perf_counter() + min(seconds, budget.left() - 10)
        start = None
        while time.perf_counter() < deadline:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.split(":")[0], dtype=torch.float16, enabled=cuda):
                outputs = model(images)
            loss, _ = loss_fn([o.float() for o in outputs], targets)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            steps += 1
            if steps == 3:  # the first steps pick kernels; time from here
                synchronize(device)
                start, timed_from = time.perf_counter(), steps
            losses.append(float(loss.detach()) if steps % 10 == 0 else None)
        synchronize(device)
        if start is None:
            progress(f"training {name}: too few steps to time")
            continue
        elapsed = time.perf_counter() - start
        images_per_s = (steps - timed_from) * batch / elapsed
        finite = [v for v in losses if v is not None]
        rows.append({"model": name, "imgsz": size, "batch": batch, "steps": steps, "seconds": round(elapsed, 1),
                     "images_per_s": images_per_s, "amp": "fp16" if cuda else "off", "first_loss": finite[0] if finite else None,
                     "last_loss": finite[-1] if finite else None})
        progress(f"training {name}@{size}: {images_per_s:.0f} images/s over {steps} steps")
    return rows


def write_report(out: Path, info: dict[str, Any], inference: list[dict[str, Any]], training: list[dict[str, Any]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps({"machine": info, "inference": inference, "training": training}, indent=2))
    lines = ["# GPU check", "", f"GPU: {info['gpu']} · CUDA {info['cuda']} · torch {info['torch']} · "
             f"onnxruntime {info.get('onnxruntime') or 'absent'} · random weights unless given", "",
             "## Inference (batch 1 latency, batch 64 throughput)", "",
             "| model | imgsz | batch | mode | median ms | p90 ms | images/s |", "|---|---|---|---|---|---|---|"]
    for r in inference:
        lines.append(f"| {r['model']} | {r['imgsz']} | {r['batch']} | {r['mode']} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | {r['images_per_s']:.0f} |")
    lines += ["", "## Training (synthetic images and boxes, AMP fp16, SGD)", "",
              "| model | imgsz | batch | steps | seconds | images/s |", "|---|---|---|---|---|---|"]
    for r in training:
        lines.append(f"| {r['model']} | {r['imgsz']} | {r['batch']} | {r['steps']} | {r['seconds']} | {r['images_per_s']:.0f} |")
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="folder for gpu_check.md and gpu_check.json")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for the whole check (default 420)")
    parser.add_argument("--train-seconds", type=float, default=40.0, help="training seconds per model (default 40)")
    parser.add_argument("--weights", action="append", default=[], metavar="NAME=PATH",
                        help="imported litedet weights for v5lite-e / v5lite-s (default: random weights)")
    parser.add_argument("--models", default=",".join(f"{n}@{s}" for n, s in MODELS), help="NAME@SIZE,... (default: %(default)s)")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)), help="inference batch sizes (default: %(default)s)")
    parser.add_argument("--train-batch", type=int, default=64, help="training batch size (default 64)")
    parser.add_argument("--device", default="cuda", help="cuda[:N]; 'cpu' runs a functional smoke test (tests)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU found (torch.cuda.is_available() is False); nothing to check")
        return 0
    try:
        models = [(spec.split("@")[0], int(spec.split("@")[1])) for spec in args.models.split(",") if spec]
        batches = [int(b) for b in args.batches.split(",") if b]
        weights = dict(item.split("=", 1) for item in args.weights)
    except (IndexError, ValueError):
        parser.error(f"--models takes NAME@SIZE,..., --batches integers, --weights NAME=PATH; got "
                     f"{args.models!r}, {args.batches!r}, {args.weights!r}")
    budget = Budget(args.budget)
    torch.backends.cudnn.benchmark = True

    def progress(message: str) -> None:
        print(f"[{args.budget - budget.left():5.0f} s] {message}", flush=True)

    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    info = {"gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "none (CPU smoke run)",
            "cuda": torch.version.cuda, "torch": torch.__version__,
            "onnxruntime": ort_version, "python": platform.python_version(), "weights": weights}
    progress(f"{info['gpu']}, torch {info['torch']}, CUDA {info['cuda']}")
    with tempfile.TemporaryDirectory() as workdir:
        inference = inference_section(models, batches, weights, budget, Path(workdir), progress, args.device)
    training = training_section(models, args.train_batch, budget, args.train_seconds, progress, args.device)
    write_report(args.out, info, inference, training)
    progress(f"wrote {args.out / 'gpu_check.md'} and {args.out / 'gpu_check.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
