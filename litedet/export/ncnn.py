"""ncnn export via pnnx: TorchScript trace -> the pnnx converter (its CLI) -> ncnn ``.param``/``.bin``.

This is what ``pnnx.export`` does, minus its last step (importing the generated Python model),
and with the converter's exit status and log checked. BENCHMARKS.md: pnnx traces the model, so it
gets one warm-up call first; a dynamic export passes a second input size (``inputshape2``) so pnnx
keeps shapes symbolic. ``half`` stores weights as fp16 (pnnx ``fp16=1``).
"""

from __future__ import annotations

import shutil
import subprocess
import warnings
from pathlib import Path

import torch
from torch import nn

from litedet.runtime.ncnn_backend import param_blobs


def _shape_arg(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(str(v) for v in shape) + "]f32"


def export_ncnn(
    model: nn.Module,
    param_path: str | Path,
    imgsz: tuple[int, int],
    workdir: str | Path,
    dynamic: bool = False,
    half: bool = False,
    stride: int = 32,
    timeout: float = 600.0,
) -> tuple[list[str], list[str]]:
    """Write ``param_path`` (``.param``) and its ``.bin``; returns (input names, output names).

    pnnx's own files (TorchScript, pnnx graph, generated Python, log) stay in ``workdir``. A layer
    ncnn cannot run raises a ValueError naming the layer and its type.
    """
    import ncnn
    import pnnx

    workdir = Path(workdir).resolve()  # pnnx runs with cwd=workdir
    param_path = Path(param_path)
    example = torch.zeros(1, 3, *imgsz)
    with torch.no_grad():
        outputs = model(example)  # warm-up: pnnx traces the next call
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes on Python-level shape checks
            traced = torch.jit.trace(model, (example,), check_trace=False, strict=False)
    num_outputs = len(outputs) if isinstance(outputs, (list, tuple)) else 1
    traced_path = workdir / "model.pt"
    traced.save(str(traced_path))
    built_param, built_bin = workdir / "model.ncnn.param", workdir / "model.ncnn.bin"
    command = [
        pnnx.EXEC_PATH,
        str(traced_path),
        "inputshape=" + _shape_arg(tuple(example.shape)),
        "device=cpu",
        f"fp16={1 if half else 0}",
        f"pnnxparam={workdir / 'model.pnnx.param'}",
        f"pnnxbin={workdir / 'model.pnnx.bin'}",
        f"pnnxpy={workdir / 'model_pnnx.py'}",
        f"pnnxonnx={workdir / 'model.pnnx.onnx'}",
        f"ncnnparam={built_param}",
        f"ncnnbin={built_bin}",
        f"ncnnpy={workdir / 'model_ncnn.py'}",
    ]
    if dynamic:
        command.append("inputshape2=" + _shape_arg((1, 3, imgsz[0] + stride, imgsz[1] + 2 * stride)))
    process = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=timeout, check=False)
    (workdir / "pnnx.log").write_text(process.stdout + process.stderr)
    if process.returncode != 0 or not built_param.is_file() or not built_bin.is_file():
        tail = " | ".join((process.stdout + process.stderr).strip().splitlines()[-6:])
        raise ValueError(f"pnnx could not convert the model (exit status {process.returncode}): {tail}")
    input_names, _ = param_blobs(built_param)
    unknown = _unsupported_layers(built_param, ncnn)
    if unknown:
        from litedet.export.onnx import locate_op

        described = []
        for name, kind in unknown[:5]:
            modules = locate_op(model, example, kind) if kind.startswith("aten::") else []
            described.append(f"{kind} in layer {', '.join(modules[:3])}" if modules else f"{kind} (ncnn layer {name!r})")
        raise ValueError(
            "ncnn cannot run " + "; ".join(described)
            + " (pnnx left these ops unconverted; replace them with ncnn-supported ops or export to onnx/openvino)"
        )
    output_names = _output_blobs(built_param)
    if len(output_names) != num_outputs:
        raise ValueError(f"pnnx wrote {len(output_names)} outputs {output_names}, the model has {num_outputs}")
    shutil.move(str(built_param), str(param_path))
    shutil.move(str(built_bin), str(param_path.with_suffix(".bin")))
    return input_names, output_names


def export(
    model: nn.Module,
    path: str | Path,
    imgsz: tuple[int, int],
    workdir: str | Path,
    dynamic: bool = False,
    half: bool = False,
    nms: nn.Module | None = None,
    stride: int = 32,
    uint8_input: object = None,
) -> tuple[list[str], list[str]]:
    """The format-table entry point (``litedet.export.formats``): (input names, output names).

    The graph always takes float input: with ``uint8_input`` the sidecar says so and the runtime
    converts and normalises the uint8 image in ncnn's own ``Mat.from_pixels`` /
    ``substract_mean_normalize`` (``litedet.runtime.ncnn_backend``)."""
    if nms is not None:
        raise ValueError("ncnn export has no in-graph NMS; use --format onnx for --nms")
    return export_ncnn(model, path, imgsz, workdir, dynamic=dynamic, half=half, stride=stride)


def _output_blobs(param: Path) -> list[str]:
    """Blobs produced by a layer and consumed by none: the graph outputs, in layer order."""
    produced: list[str] = []
    consumed: set[str] = set()
    for line in param.read_text(errors="replace").split("\n")[2:]:
        fields = line.split()
        if len(fields) < 4:
            continue
        n_in, n_out = int(fields[2]), int(fields[3])
        consumed.update(fields[4 : 4 + n_in])
        produced.extend(fields[4 + n_in : 4 + n_in + n_out])
    return [blob for blob in produced if blob not in consumed]


def _unsupported_layers(param: Path, ncnn_module) -> list[tuple[str, str]]:
    """(layer name, type) of every layer in ``param`` that this ncnn build cannot create."""
    found = []
    for line in param.read_text(errors="replace").split("\n")[2:]:
        fields = line.split()
        if len(fields) >= 2 and ncnn_module.layer_to_index(fields[0]) < 0:
            found.append((fields[1], fields[0]))
    return found
