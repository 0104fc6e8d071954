"""Peers: other detectors measured in the same run as litedet's models, chosen by name.

Two kinds (DESIGN.md "Direct metrics": every speed claim sits beside a peer measured in the same
run):

- *defined* peers are built from their own definitions with random weights (speed does not
  depend on values): ultralytics ``yolov8n.yaml`` / ``yolo11n.yaml`` (optional dependency) and
  torchvision's ``ssdlite320_mobilenet_v3_large``. They run on torch eager and are exported to
  ONNX / OpenVINO / ncnn with the engines' own converters (torch.onnx, openvino.convert_model,
  pnnx) into a cache folder.
- *published* peers are the files in ``../shared/weights`` run through their own engine: the
  YOLOv5-Lite and NanoDet-Plus ncnn builds (``ncnn`` package directly), FastestDet and
  Yolo-FastestV2 (onnxruntime). Their input size is fixed by the file.

A peer whose package or file is missing is skipped with a note, never an error.
Each peer also knows its own pre- and post-processing, for end-to-end timing on real images.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from litedet.data.transforms import LetterboxInfo

logger = logging.getLogger(__name__)

Runner = Callable[[np.ndarray], list[np.ndarray]]
ENGINES = ("torch", "onnxruntime", "openvino", "ncnn")


def shared_dir() -> Path:
    """``LITEDET_SHARED`` or ``../shared`` beside the repository (as the tests find it)."""
    default = Path(__file__).resolve().parents[2].parent / "shared"
    return Path(os.environ.get("LITEDET_SHARED", default)).resolve()


@dataclass
class Detections:
    """Boxes (x1, y1, x2, y2) in original-image pixels [N, 4], scores [N], class ids [N]."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


@dataclass
class PeerVariant:
    """One runnable peer at one input size. ``model`` is the peer name as given to ``--peers``;
    ``variant`` names the build when a peer has several (``v5lite-ncnn`` has e@320 and s@416)."""

    model: str
    variant: str
    imgsz: int
    engines: tuple[str, ...]
    source: str
    notes: list[str] = field(default_factory=list)


class Peer(ABC):
    """A named peer: which engines and sizes it runs, how to open it, how to pre/post-process."""

    name: str = ""
    description: str = ""
    engines: tuple[str, ...] = ENGINES

    def missing(self) -> str | None:
        """Why this peer cannot run here (missing package/file), or None."""
        return None

    @abstractmethod
    def variants(self, imgsz: Sequence[int]) -> list[PeerVariant]:
        """The builds to measure for the requested input sizes."""

    @abstractmethod
    def open(self, variant: PeerVariant, engine: str, threads: int, cache_dir: Path, dynamic_batch: bool = False,
             device: str = "cpu", precision: str = "fp32") -> Runner:
        """A callable taking a float32 batch [B, 3, H, W] and returning the raw outputs.
        ``dynamic_batch``: export with a free batch axis (only needed for batches > 1);
        ``device`` / ``precision`` apply to the torch engine."""

    def torch_module(self, variant: PeerVariant) -> Any | None:
        """The torch definition (for params / FLOPs / MAC), or None for file-only peers."""
        return None

    def info(self, variant: PeerVariant) -> dict[str, float | None]:
        """Params (count) and, where the file allows, GFLOPs for peers without a torch module;
        others are profiled by the caller."""
        return {"params": None}

    @abstractmethod
    def preprocess(self, image: np.ndarray, variant: PeerVariant) -> tuple[np.ndarray, LetterboxInfo]:
        """A BGR uint8 image [H, W, 3] -> network input [1, 3, S, S] float32 and its meta."""

    @abstractmethod
    def postprocess(
        self, outputs: list[np.ndarray], meta: LetterboxInfo, variant: PeerVariant, conf: float, iou: float
    ) -> Detections:
        """Raw outputs of one image -> detections in original-image pixels."""


# --------------------------------------------------------------------------- engines


def open_engine_file(engine: str, path: Path, threads: int, input_name: str | None = None,
                     output_names: Sequence[str] | None = None) -> Runner:
    """Run an engine file (``.onnx``, OpenVINO ``.xml``, ncnn ``.param`` + ``.bin``) on the CPU
    with ``threads`` threads, fp32 (OpenVINO's bf16 default is turned off, BENCHMARKS.md)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"engine file not found: {path}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if engine == "onnxruntime":
        import onnxruntime as ort

        from litedet.runtime.onnxruntime_backend import session_options

        # the same session settings as litedet's own models (threads stop spinning between runs)
        session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
        name = input_name or session.get_inputs()[0].name
        outputs = list(output_names) if output_names else None

        def run_ort(batch: np.ndarray) -> list[np.ndarray]:
            return list(session.run(outputs, {name: batch}))

        return run_ort
    if engine == "openvino":
        import openvino as ov

        from litedet.runtime.openvino_backend import compile_properties

        compiled = ov.Core().compile_model(str(path), "CPU", compile_properties("fp32", threads))
        request = compiled.create_infer_request()

        def run_openvino(batch: np.ndarray) -> list[np.ndarray]:
            result = request.infer({0: batch})
            return [np.asarray(result[port]) for port in compiled.outputs]

        return run_openvino
    if engine == "ncnn":
        import ncnn

        if output_names is None or input_name is None:
            input_name, output_names = ncnn_io_names(path)
        net = ncnn.Net()
        net.opt.num_threads = threads
        net.opt.use_vulkan_compute = False
        # fp32 arithmetic, as litedet's ncnn backend runs at precision fp32: ncnn would otherwise
        # pick fp16/bf16 paths on CPUs that have them, and the rows would not compare.
        for flag in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage", "use_bf16_packed"):
            setattr(net.opt, flag, False)
        if net.load_param(str(path)) != 0 or net.load_model(str(path.with_suffix(".bin"))) != 0:
            raise ValueError(f"ncnn could not load {path} / {path.with_suffix('.bin')}")
        names = list(output_names)

        def run_ncnn(batch: np.ndarray) -> list[np.ndarray]:
            per_image: list[list[np.ndarray]] = []
            for image in batch:  # ncnn runs one image per extractor
                # The input array and Mat must outlive the extraction: the binding keeps pointers,
                # and a temporary here gives garbage outputs or a crash (ncnn 1.0.20261020).
                data = np.ascontiguousarray(image)
                mat_in = ncnn.Mat(data)
                extractor = net.create_extractor()
                extractor.input(input_name, mat_in)
                outs = []
                for out_name in names:
                    ret, mat = extractor.extract(out_name)
                    if ret != 0:
                        raise ValueError(f"ncnn: output {out_name!r} not found in {path}")
                    outs.append(np.array(mat)[None])
                per_image.append(outs)
                del extractor, mat_in, data
            return [np.concatenate(level) for level in zip(*per_image)]

        return run_ncnn
    raise ValueError(f"engine {engine!r} cannot run a file; choose one of onnxruntime, openvino, ncnn")


def ncnn_io_names(param: Path) -> tuple[str, list[str]]:
    """The input blob and the output blobs (blobs produced and never consumed) of an ncnn param."""
    lines = Path(param).read_text().split("\n")
    produced: list[str] = []
    consumed: set[str] = set()
    input_name = None
    for line in lines[2:]:
        parts = line.split()
        if len(parts) < 4:
            continue
        kind, n_in, n_out = parts[0], int(parts[2]), int(parts[3])
        ins = parts[4:4 + n_in]
        outs = parts[4 + n_in:4 + n_in + n_out]
        if kind == "Input" and input_name is None:
            input_name = outs[0]
        consumed.update(ins)
        produced.extend(outs)
    if input_name is None:
        raise ValueError(f"{param}: no Input layer in this ncnn param")
    return input_name, [name for name in produced if name not in consumed]


_NCNN_WEIGHT_LAYERS = ("Convolution", "ConvolutionDepthWise", "Deconvolution", "DeconvolutionDepthWise", "InnerProduct")


def ncnn_param_count(param: Path) -> int:
    """Weights + biases of the conv / fully-connected layers of an ncnn param file (BN is folded
    into convolutions by the converters, so this is the deployed parameter count)."""
    total = 0
    for line in Path(param).read_text().split("\n")[2:]:
        parts = line.split()
        if len(parts) < 4 or parts[0] not in _NCNN_WEIGHT_LAYERS:
            continue
        n_in, n_out = int(parts[2]), int(parts[3])
        values = dict(item.split("=", 1) for item in parts[4 + n_in + n_out:] if "=" in item)
        total += int(values.get("6", 0))  # weight_data_size
        if values.get("5", "0") == "1":  # bias_term
            total += int(values.get("0", 0))  # num_output
    return total


def ncnn_gflops(param: Path, imgsz: int) -> float | None:
    """GFLOPs per image of an ncnn model at ``imgsz`` x ``imgsz``: 2 x the multiply-adds of its
    conv and fully-connected layers (weights x output positions), the output sizes read by running
    the net once on a blank image; None without the ``ncnn`` package or when the net does not run."""
    try:
        import ncnn
    except ImportError:
        return None
    layers, input_name = [], None
    for line in Path(param).read_text().split("\n")[2:]:
        parts = line.split()
        if len(parts) < 4:
            continue
        n_in, n_out = int(parts[2]), int(parts[3])
        tops = parts[4 + n_in:4 + n_in + n_out]
        if parts[0] == "Input" and input_name is None and tops:
            input_name = tops[0]
        if parts[0] in _NCNN_WEIGHT_LAYERS and tops:
            values = dict(item.split("=", 1) for item in parts[4 + n_in + n_out:] if "=" in item)
            layers.append((tops[0], int(values.get("6", 0))))
    if input_name is None or not layers:
        return None
    net = ncnn.Net()
    try:
        if net.load_param(str(param)) != 0 or net.load_model(str(Path(param).with_suffix(".bin"))) != 0:
            return None
        blank = ncnn.Mat(imgsz, imgsz, 3)  # w, h, c
        blank.fill(0.0)
        macs = 0
        with net.create_extractor() as extractor:
            extractor.set_light_mode(False)  # keep every blob: each conv's output size is read below
            extractor.input(input_name, blank)
            for top, weights in layers:
                status, blob = extractor.extract(top)
                if status != 0:
                    return None
                macs += weights * blob.w * blob.h  # [c, h, w]: each output position uses every weight once
        return 2.0 * macs / 1e9
    finally:
        net.clear()


def _set_torch_threads(threads: int) -> None:
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def torch_runner(module: Any, threads: int, device: str = "cpu", precision: str = "fp32") -> Runner:
    """Eager torch under ``no_grad`` (not ``inference_mode``: modules that cache tensors, such as
    ultralytics' anchors, must stay exportable afterwards); numpy in, numpy out (the copy back
    to the host waits for CUDA). Sets the thread count on each call (cheap when unchanged) so
    interleaved configurations with other counts stay correct. ``precision`` bf16/fp16 runs under
    autocast, as ``litedet.runtime.torch_backend`` does."""
    import copy

    import torch

    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        raise ValueError(f"precision must be one of {list(dtypes)}, got {precision!r}")
    if device != "cpu":
        module = copy.deepcopy(module).to(device)  # the CPU module stays for the exporters
    device_type = torch.device(device).type
    dtype = dtypes[precision]

    def run_torch(batch: np.ndarray) -> list[np.ndarray]:
        _set_torch_threads(threads)
        inputs = torch.from_numpy(batch).to(device)
        with torch.no_grad(), torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
            out = module(inputs)
        outs = out if isinstance(out, (list, tuple)) else [out]
        return [o.float().cpu().numpy() for o in outs]

    return run_torch


@contextlib.contextmanager
def redirect_native_output(log_path: Path) -> Iterator[None]:
    """Send what native code writes to stdout/stderr (file descriptors 1 and 2) to ``log_path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def export_torch_module(module: Any, imgsz: int, engine: str, cache_dir: Path, stem: str,
                        dynamic_batch: bool = False) -> Path:
    """Export a torch module (fixed size; batch 1, or a free batch axis with ``dynamic_batch``)
    for ``engine`` into ``cache_dir`` once.

    ONNX via ``torch.onnx.export`` (TorchScript path, opset 17); OpenVINO IR via
    ``openvino.convert_model`` of that ONNX; ncnn via ``pnnx.export``.
    """
    import torch

    cache_dir.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, 3, imgsz, imgsz)
    if dynamic_batch and engine != "ncnn":  # ncnn runs one image at a time anyway
        stem = f"{stem}_dynbatch"
    onnx_path = cache_dir / f"{stem}.onnx"
    if engine in ("onnxruntime", "openvino") and not onnx_path.is_file():
        tmp = onnx_path.with_suffix(".tmp.onnx")
        with torch.no_grad():
                torch.onnx.export(module, (example,), str(tmp), opset_version=17, dynamo=False,
                              input_names=["images"], do_constant_folding=True,
                              dynamic_axes={"images": {0: "batch"}} if dynamic_batch else None)
        os.replace(tmp, onnx_path)
    if engine == "onnxruntime":
        return onnx_path
    if engine == "openvino":
        xml = cache_dir / f"{stem}.xml"
        if not xml.is_file():
            import openvino as ov

            ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
        return xml
    if engine == "ncnn":
        param = cache_dir / f"{stem}.ncnn.param"
        if not param.is_file():
            import pnnx

            work = cache_dir / f"{stem}_pnnx"
            work.mkdir(exist_ok=True)
            with torch.no_grad():
                module(example)  # pnnx traces; a data-dependent first call must happen before (BENCHMARKS.md)
            with redirect_native_output(work / "pnnx.log"):  # pnnx prints every pass on fd 1/2
                pnnx.export(module, str(work / f"{stem}.pt"), (example,),
                            ncnnparam=str(param), ncnnbin=str(param.with_suffix(".bin")))
        return param
    raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")


# --------------------------------------------------------------------------- pre/post helpers


def _letterbox(image: np.ndarray, size: int, pad_value: int = 114) -> tuple[np.ndarray, LetterboxInfo]:
    from litedet.data.transforms import letterbox

    return letterbox(image, size, pad_value=pad_value, center=True)


def _stretch(image: np.ndarray, size: int, interpolation: int | None = None) -> tuple[np.ndarray, LetterboxInfo]:
    import cv2

    from litedet.data.transforms import stretch

    return stretch(image, size, cv2.INTER_LINEAR if interpolation is None else interpolation)


def _tensor(image: np.ndarray, rgb: bool, mean: Sequence[float] = (0.0, 0.0, 0.0),
            std: Sequence[float] = (255.0, 255.0, 255.0)) -> np.ndarray:
    from litedet.data.transforms import to_tensor

    return to_tensor(image, rgb, mean, std)[None]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _cxcywh_to_xyxy(box: np.ndarray) -> np.ndarray:
    from litedet.ops import xywh_to_xyxy

    return xywh_to_xyxy(box.reshape(-1, 4))


def _nms_detections(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float, meta: LetterboxInfo,
                    max_det: int = 300) -> Detections:
    """Per-class NMS (litedet.ops) then boxes back to the original image."""
    from litedet.ops import batched_nms, scale_boxes

    if boxes.shape[0] == 0:
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    keep = batched_nms(boxes, scores, classes, iou)[:max_det]
    return Detections(scale_boxes(boxes[keep], meta.ratio, meta.pad, meta.original_shape),
                      scores[keep].astype(np.float32), classes[keep].astype(np.int64))


# --------------------------------------------------------------------------- defined peers


def first_output(module: Any) -> Any:
    """Wrap a module whose eval output is (decoded, raw...) so export and timing see only the
    first tensor (ultralytics' Detect head returns both in eval mode)."""
    from torch import nn

    class FirstOutput(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x):  # noqa: ANN001 - torch.Tensor
            out = self.inner(x)
            return out[0] if isinstance(out, (tuple, list)) else out

    return FirstOutput(module).eval()


class UltralyticsPeer(Peer):
    """YOLOv8n / YOLO11n from ultralytics' model yaml, random weights, Conv+BN fused (as
    ultralytics' own benchmark does). The head decodes boxes ([B, 84, N]); NMS is outside."""

    engines = ENGINES

    def __init__(self, name: str, yaml: str) -> None:
        self.name = name
        self.yaml = yaml
        self.description = f"ultralytics {yaml} (random weights)"
        self._modules: dict[int, Any] = {}

    def missing(self) -> str | None:
        if importlib.util.find_spec("ultralytics") is None:
            return "ultralytics is not installed (pip install ultralytics); optional peer skipped"
        return None

    def variants(self, imgsz: Sequence[int]) -> list[PeerVariant]:
        return [PeerVariant(self.name, self.name, int(s), self.engines, self.description) for s in imgsz]

    def torch_module(self, variant: PeerVariant) -> Any:
        if variant.imgsz not in self._modules:
            os.environ.setdefault("YOLO_OFFLINE", "1")  # never reach for the network
            os.environ.setdefault("YOLO_VERBOSE", "False")
            from ultralytics.nn.tasks import DetectionModel

            model = DetectionModel(self.yaml, nc=80, verbose=False).eval()
            model = model.fuse(verbose=False)
            self._modules[variant.imgsz] = first_output(model)
        return self._modules[variant.imgsz]

    def open(self, variant: PeerVariant, engine: str, threads: int, cache_dir: Path, dynamic_batch: bool = False,
             device: str = "cpu", precision: str = "fp32") -> Runner:
        module = self.torch_module(variant)
        if engine == "torch":
            return torch_runner(module, threads, device, precision)
        path = export_torch_module(module, variant.imgsz, engine, cache_dir, f"{self.name}_{variant.imgsz}", dynamic_batch)
        return open_engine_file(engine, path, threads)

    def preprocess(self, image: np.ndarray, variant: PeerVariant) -> tuple[np.ndarray, LetterboxInfo]:
        boxed, meta = _letterbox(image, variant.imgsz, 114)
        return _tensor(boxed, rgb=True), meta

    def postprocess(self, outputs, meta, variant, conf, iou) -> Detections:
        pred = outputs[0][0].T  # [N, 4 + nc]: cx, cy, w, h, class scores (already sigmoided)
        scores_all = pred[:, 4:]
        classes = scores_all.argmax(1)
        scores = scores_all[np.arange(len(classes)), classes]
        keep = scores > conf
        return _nms_detections(_cxcywh_to_xyxy(pred[keep, :4]), scores[keep], classes[keep], iou, meta)


class SSDLitePeer(Peer):
    """torchvision ``ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)``.

    Network only = backbone + head (box regressions and class logits, no anchors decode).
    End-to-end runs torchvision's own full model (its transform, decode and NMS), on torch only.
    """

    name = "ssdlite"
    description = "torchvision ssdlite320_mobilenet_v3_large (random weights)"
    engines = ENGINES

    def __init__(self) -> None:
        self._full: Any | None = None
        self._net: Any | None = None

    def missing(self) -> str | None:
        if importlib.util.find_spec("torchvision") is None:
            return "torchvision is not installed; ssdlite peer skipped"
        return None

    def variants(self, imgsz: Sequence[int]) -> list[PeerVariant]:
        return [
            PeerVariant(self.name, self.name, int(s), self.engines, self.description,
                        notes=["end-to-end on torch only: torchvision's own transform + postprocess"])
            for s in imgsz
        ]

    def full_model(self) -> Any:
        if self._full is None:
            from torchvision.models.detection import ssdlite320_mobilenet_v3_large

            self._full = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None).eval()
        return self._full

    def torch_module(self, variant: PeerVariant) -> Any:
        if self._net is None:
            from torch import nn

            full = self.full_model()

            class SSDLiteNetwork(nn.Module):
                def __init__(self) -> None:
                    super().__init__()
                    self.backbone = full.backbone
                    self.head = full.head

                def forward(self, x):  # noqa: ANN001 - torch.Tensor
                    features = list(self.backbone(x).values())
                    out = self.head(features)
                    return out["bbox_regression"], out["cls_logits"]

            self._net = SSDLiteNetwork().eval()
        return self._net

    def open(self, variant: PeerVariant, engine: str, threads: int, cache_dir: Path, dynamic_batch: bool = False,
             device: str = "cpu", precision: str = "fp32") -> Runner:
        module = self.torch_module(variant)
        if engine == "torch":
            return torch_runner(module, threads, device, precision)
        path = export_torch_module(module, variant.imgsz, engine, cache_dir, f"ssdlite_{variant.imgsz}", dynamic_batch)
        return open_engine_file(engine, path, threads)

    def end_to_end_runner(self, variant: PeerVariant, threads: int) -> Callable[[np.ndarray], Detections]:
        """torchvision's full model on a BGR image: its own resize/normalise, decode and NMS."""
        import torch

        full = self.full_model()
        full.transform.min_size = (variant.imgsz,)
        full.transform.max_size = variant.imgsz

        def detect(image: np.ndarray) -> Detections:
            _set_torch_threads(threads)
            tensor = torch.from_numpy(np.ascontiguousarray(image[..., ::-1].transpose(2, 0, 1))).float() / 255
            with torch.inference_mode():
                out = full([tensor])[0]
            return Detections(out["boxes"].numpy(), out["scores"].numpy(), out["labels"].numpy())

        return detect

    def preprocess(self, image, variant):
        boxed, meta = _stretch(image, variant.imgsz)
        return _tensor(boxed, rgb=True), meta

    def postprocess(self, outputs, meta, variant, conf, iou) -> Detections:
        raise ValueError("ssdlite end-to-end runs torchvision's full model (end_to_end_runner), not decoded outputs")


# --------------------------------------------------------------------------- published peers


class PublishedPeer(Peer):
    """A published engine file in ../shared/weights, run through its own engine."""

    engine: str = "ncnn"
    files: dict[str, tuple[str, int]] = {}  # variant -> (path under shared, input size)

    def missing(self) -> str | None:
        if importlib.util.find_spec(self.engine) is None:
            return f"{self.engine} is not installed; {self.name} skipped"
        absent = [str(shared_dir() / rel) for rel, _ in self.files.values() if not (shared_dir() / rel).is_file()]
        if absent:
            return f"published weights not found: {', '.join(absent)} (set LITEDET_SHARED); {self.name} skipped"
        return None

    @property
    def engines(self) -> tuple[str, ...]:  # type: ignore[override]
        return (self.engine,)

    def variants(self, imgsz: Sequence[int]) -> list[PeerVariant]:
        # The files have one native input size; requested sizes do not apply.
        return [
            PeerVariant(self.name, variant, size, (self.engine,), str(shared_dir() / rel),
                        notes=[f"published build, fixed input {size}"])
            for variant, (rel, size) in self.files.items()
        ]

    def path(self, variant: PeerVariant) -> Path:
        return shared_dir() / self.files[variant.variant][0]

    def open(self, variant: PeerVariant, engine: str, threads: int, cache_dir: Path, dynamic_batch: bool = False,
             device: str = "cpu", precision: str = "fp32") -> Runner:
        if engine != self.engine:
            raise ValueError(f"{self.name} is a published {self.engine} build; engine {engine!r} does not apply")
        return open_engine_file(engine, self.path(variant), threads)

    def info(self, variant: PeerVariant) -> dict[str, float | None]:
        path = self.path(variant)
        if path.suffix == ".onnx":
            import onnx

            from litedet.compress.report import count_file_gflops

            graph = onnx.load(str(path)).graph
            return {"params": float(sum(int(np.prod(t.dims)) for t in graph.initializer)),
                    "gflops": count_file_gflops(path)}
        if path.suffix == ".param":
            return {"params": float(ncnn_param_count(path)), "gflops": ncnn_gflops(path, variant.imgsz)}
        return {"params": None}


class V5LiteNcnnPeer(PublishedPeer):
    """YOLOv5-Lite-e @320 and -s @416, published ncnn builds (fp16 storage). Outputs are raw
    logits reshaped by the graph to [3, H*W, 85] per level (``output``, ``1111``, ``2222``)."""

    name = "v5lite-ncnn"
    description = "YOLOv5-Lite published ncnn builds (ppogg/YOLOv5-Lite)"
    engine = "ncnn"
    files = {
        "v5lite-e": ("weights/yolov5-lite/v5lite-e.ncnn.param", 320),
        "v5lite-s": ("weights/yolov5-lite/v5lite-s.ncnn.param", 416),
    }
    strides = (8, 16, 32)

    def preprocess(self, image, variant):
        boxed, meta = _letterbox(image, variant.imgsz, 114)
        return _tensor(boxed, rgb=True), meta

    def postprocess(self, outputs, meta, variant, conf, iou) -> Detections:
        from litedet.config import YOLOV5_ANCHORS

        boxes_all, scores_all, classes_all = [], [], []
        for level, (out, stride) in enumerate(zip(outputs, self.strides)):
            grid = variant.imgsz // stride
            pred = _sigmoid(out.reshape(3, grid, grid, 85).astype(np.float32))  # YOLOv5: sigmoid on all
            ys, xs = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
            anchors = np.asarray(YOLOV5_ANCHORS[level], np.float32).reshape(3, 1, 1, 2)
            cx = (pred[..., 0] * 2 - 0.5 + xs) * stride
            cy = (pred[..., 1] * 2 - 0.5 + ys) * stride
            wh = (pred[..., 2:4] * 2) ** 2 * anchors
            cls_scores = pred[..., 5:] * pred[..., 4:5]
            classes = cls_scores.argmax(-1)
            scores = np.take_along_axis(cls_scores, classes[..., None], -1)[..., 0]
            keep = scores > conf
            box = np.stack([cx[keep], cy[keep], wh[..., 0][keep], wh[..., 1][keep]], 1)
            boxes_all.append(_cxcywh_to_xyxy(box))
            scores_all.append(scores[keep])
            classes_all.append(classes[keep])
        return _nms_detections(np.concatenate(boxes_all), np.concatenate(scores_all), np.concatenate(classes_all), iou, meta)


class NanoDetPlusPeer(PublishedPeer):
    """NanoDet-Plus-m 416 ncnn (Qengineering build): BGR, mean/std normalised, output
    [3598, 112] = 80 sigmoided class scores + 4 x 8 distance bins, strides 8/16/32/64."""

    name = "nanodet-plus"
    description = "NanoDet-Plus-m 416, published ncnn build"
    engine = "ncnn"
    files = {"nanodet-plus-m-416": ("weights/nanodet-plus-m-416/nanodet-plus-m_416.param", 416)}
    strides = (8, 16, 32, 64)
    mean = (103.53, 116.28, 123.675)
    std = (57.375, 57.12, 58.395)
    reg_max = 7

    def preprocess(self, image, variant):
        boxed, meta = _letterbox(image, variant.imgsz, 0)
        return _tensor(boxed, rgb=False, mean=self.mean, std=self.std), meta

    def postprocess(self, outputs, meta, variant, conf, iou) -> Detections:
        pred = outputs[0].reshape(-1, 80 + 4 * (self.reg_max + 1)).astype(np.float32)
        centers = []
        for stride in self.strides:
            size = -(-variant.imgsz // stride)
            ys, xs = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
            centers.append(np.stack([xs.ravel() * stride, ys.ravel() * stride, np.full(size * size, stride)], 1))
        prior = np.concatenate(centers).astype(np.float32)
        scores_all = pred[:, :80]
        classes = scores_all.argmax(1)
        scores = scores_all[np.arange(len(classes)), classes]
        keep = scores > conf
        bins = pred[keep, 80:].reshape(-1, 4, self.reg_max + 1)
        bins = np.exp(bins - bins.max(-1, keepdims=True))
        dist = (bins / bins.sum(-1, keepdims=True) * np.arange(self.reg_max + 1)).sum(-1) * prior[keep, 2:3]
        cx, cy = prior[keep, 0], prior[keep, 1]
        boxes = np.stack([cx - dist[:, 0], cy - dist[:, 1], cx + dist[:, 2], cy + dist[:, 3]], 1)
        return _nms_detections(boxes, scores[keep], classes[keep], iou, meta)


class FastestDetPeer(PublishedPeer):
    """FastestDet 352 ONNX: BGR / 255, plain resize (INTER_AREA); output [1, 85, 22, 22] =
    sigmoided objectness, 4 box terms (tanh offsets, sigmoid sizes), 80 softmaxed classes."""

    name = "fastestdet"
    description = "FastestDet 352, published ONNX (dog-qiuqiu/FastestDet)"
    engine = "onnxruntime"
    files = {"fastestdet": ("weights/fastestdet/FastestDet.onnx", 352)}

    def preprocess(self, image, variant):
        import cv2

        resized, meta = _stretch(image, variant.imgsz, cv2.INTER_AREA)
        return _tensor(resized, rgb=False), meta

    def postprocess(self, outputs, meta, variant, conf, iou) -> Detections:
        fmap = outputs[0][0].astype(np.float32)  # [85, H, W]
        height, width = fmap.shape[1:]
        obj = fmap[0]
        cls = fmap[5:]
        classes = cls.argmax(0)
        scores = obj * np.take_along_axis(cls, classes[None], 0)[0]
        ys, xs = np.nonzero(scores > conf)
        cx = (xs + np.tanh(fmap[1, ys, xs])) / width * variant.imgsz
        cy = (ys + np.tanh(fmap[2, ys, xs])) / height * variant.imgsz
        bw = _sigmoid(fmap[3, ys, xs]) * variant.imgsz
        bh = _sigmoid(fmap[4, ys, xs]) * variant.imgsz
        boxes = _cxcywh_to_xyxy(np.stack([cx, cy, bw, bh], 1).astype(np.float32))
        return _nms_detections(boxes, scores[ys, xs], classes[ys, xs], iou, meta)


class YoloFastestV2Peer(PublishedPeer):
    """Yolo-FastestV2 352 ONNX: BGR / 255, plain resize; output [605, 95] (22x22 + 11x11 cells;
    per cell 3 anchors x 4 box terms, 3 objectness, 80 classes; already sigmoided)."""

    name = "yolo-fastestv2"
    description = "Yolo-FastestV2 352, published ONNX (hpc203/yolo-fastestv2-opencv)"
    engine = "onnxruntime"
    files = {"yolo-fastestv2": ("weights/yolo-fastestv2/model.onnx", 352)}
    strides = (16, 32)
    anchors = np.array([12.64, 19.39, 37.88, 51.48, 55.71, 138.31, 126.91, 78.23, 131.57, 214.55, 279.92, 258.87],
                       np.float32).reshape(2, 3, 2)

    def preprocess(self, image, variant):
        resized, meta = _stretch(image, variant.imgsz)
        return _tensor(resized, rgb=False), meta

    def postprocess(self, outputs, meta, variant, conf, iou) -> Detections:
        out = outputs[0].astype(np.float32)
        boxes_all, scores_all, classes_all = [], [], []
        row = 0
        for level, stride in enumerate(self.strides):
            size = variant.imgsz // stride
            cells = out[row:row + size * size]
            row += size * size
            ys, xs = np.divmod(np.arange(size * size), size)
            classes = cells[:, 15:].argmax(1)
            cls_score = cells[np.arange(len(cells)), 15 + classes]
            for k in range(3):
                scores = cls_score * cells[:, 12 + k]
                keep = scores > conf
                term = cells[keep, 4 * k:4 * k + 4]
                cx = (term[:, 0] * 2 - 0.5 + xs[keep]) * stride
                cy = (term[:, 1] * 2 - 0.5 + ys[keep]) * stride
                w = (term[:, 2] * 2) ** 2 * self.anchors[level, k, 0]
                h = (term[:, 3] * 2) ** 2 * self.anchors[level, k, 1]
                boxes_all.append(_cxcywh_to_xyxy(np.stack([cx, cy, w, h], 1)))
                scores_all.append(scores[keep])
                classes_all.append(classes[keep])
        return _nms_detections(np.concatenate(boxes_all), np.concatenate(scores_all), np.concatenate(classes_all), iou, meta)


PEERS: dict[str, Callable[[], Peer]] = {
    "yolov8n": lambda: UltralyticsPeer("yolov8n", "yolov8n.yaml"),
    "yolo11n": lambda: UltralyticsPeer("yolo11n", "yolo11n.yaml"),
    "ssdlite": SSDLitePeer,
    "v5lite-ncnn": V5LiteNcnnPeer,
    "nanodet-plus": NanoDetPlusPeer,
    "fastestdet": FastestDetPeer,
    "yolo-fastestv2": YoloFastestV2Peer,
}


def list_peers() -> list[str]:
    """Names accepted by ``--peers``."""
    return list(PEERS)


def get_peer(name: str) -> Peer:
    """The peer called ``name``."""
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; choose from {', '.join(PEERS)}")
    return PEERS[name]()


def resolve_peers(names: Sequence[str]) -> tuple[list[Peer], list[str]]:
    """Peers that can run here, and one note per peer skipped (missing package or file)."""
    peers, notes = [], []
    for name in names:
        peer = get_peer(name)
        reason = peer.missing()
        if reason:
            logger.warning("peer %s skipped: %s", name, reason)
            notes.append(f"{name}: {reason}")
        else:
            peers.append(peer)
    return peers, notes
