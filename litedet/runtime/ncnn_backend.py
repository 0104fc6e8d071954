"""ncnn backend for exported ``.param`` + ``.bin`` models (imports no torch)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from litedet.config import ModelConfig
from litedet.runtime.base import Backend
from litedet.runtime.shapes import check_input_shape

PRECISIONS = ("fp32", "fp16")


def param_blobs(param: Path) -> tuple[list[str], list[str]]:
    """(input blob names, layer types) of an ncnn text ``.param`` file.

    Format: magic ``7767517``, then ``layer_count blob_count``, then one line per layer:
    ``type name n_in n_out in... out... key=value...``.
    """
    lines = param.read_text(errors="replace").split("\n")
    if not lines or lines[0].strip() != "7767517":
        raise ValueError(f"{param}: not an ncnn text .param file (first line should be 7767517)")
    inputs, types = [], []
    for line in lines[2:]:
        fields = line.split()
        if len(fields) < 4:
            continue
        types.append(fields[0])
        if fields[0] == "Input":
            n_in, n_out = int(fields[2]), int(fields[3])
            inputs.extend(fields[4 + n_in : 4 + n_in + n_out])
    return inputs, types


class NcnnBackend(Backend):
    """Runs an ncnn model on the CPU, one image of the batch at a time.

    ``precision="fp32"`` turns off fp16/bf16 storage, packing and arithmetic so the results match
    torch; ``"fp16"`` leaves ncnn's fp16 paths on (faster on CPUs with fp16 support). ncnn takes
    any input size the graph allows, so static exports also run at other stride multiples. A
    ``config.uint8_input`` export takes uint8 images [B, H, W, 3] BGR and converts them in ncnn
    itself (``Mat.from_pixels`` with the channel order, ``substract_mean_normalize``).
    """

    name = "ncnn"

    def __init__(
        self,
        weights: str | os.PathLike,
        config: ModelConfig,
        threads: int | None = None,
        precision: str = "fp32",
        device: str | None = None,
    ) -> None:
        import ncnn

        if precision not in PRECISIONS:
            raise ValueError(f"ncnn precision must be one of {PRECISIONS}, got {precision!r}")
        if device is not None and device.lower() != "cpu":
            raise ValueError(f"ncnn runs on the CPU here (device 'cpu'), got device {device!r}")
        super().__init__(config, threads=threads, precision=precision)
        param = Path(weights)
        model_bin = param.with_suffix(".bin")
        if not model_bin.is_file():
            raise FileNotFoundError(f"{param}: its weights file {model_bin} is missing (copy the .param and .bin together)")
        inputs, types = param_blobs(param)
        unknown = sorted({t for t in types if ncnn.layer_to_index(t) < 0})
        if unknown:
            raise ValueError(f"{param}: ncnn has no layer type {', '.join(unknown)}")
        self.input_name = str((config.extra.get("input_names") or inputs or ["in0"])[0])
        self.output_names = list(config.output_names)
        if not self.output_names:
            raise ValueError(f"{param}: its config lists no output_names; re-export with `litedet export --format ncnn`")
        self.net = ncnn.Net()
        opt = self.net.opt
        opt.num_threads = int(threads) if threads is not None else max(1, ncnn.get_physical_big_cpu_count())
        fp16 = precision == "fp16"
        opt.use_fp16_storage = fp16
        opt.use_fp16_packed = fp16
        opt.use_fp16_arithmetic = fp16
        opt.use_bf16_storage = False
        opt.use_bf16_packed = False
        opt.use_vulkan_compute = False
        if self.net.load_param(str(param)) != 0:
            raise ValueError(f"{param}: ncnn could not read this .param file")
        if self.net.load_model(str(model_bin)) != 0:
            raise ValueError(f"{model_bin}: ncnn could not read the weights (wrong or truncated .bin for {param.name})")
        self._ncnn = ncnn
        spec = config.preprocess
        self._pixel_type = ncnn.Mat.PixelType.PIXEL_BGR2RGB if spec.rgb else ncnn.Mat.PixelType.PIXEL_BGR
        self._mean = [float(m) for m in spec.mean]
        self._norm = [1.0 / float(s) for s in spec.std]

    def _mat(self, image: np.ndarray):
        """One image of the batch as an ncnn Mat [3, H, W] of normalised floats."""
        if not self.config.uint8_input:
            return self._ncnn.Mat(np.ascontiguousarray(image)).clone()
        height, width = image.shape[:2]
        mat = self._ncnn.Mat.from_pixels(np.ascontiguousarray(image), self._pixel_type, width, height)
        mat.substract_mean_normalize(self._mean, self._norm)
        return mat

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        batch = np.ascontiguousarray(batch, dtype=self.input_dtype)
        check_input_shape(batch, [], self.name, channels_last=self.config.uint8_input)
        per_output: list[list[np.ndarray]] = [[] for _ in self.output_names]
        for image in batch:
            with self.net.create_extractor() as extractor:
                extractor.input(self.input_name, self._mat(image))
                for index, name in enumerate(self.output_names):
                    status, mat = extractor.extract(name)
                    if status != 0:
                        raise ValueError(f"ncnn: could not compute output {name!r} (status {status}) for input {list(image.shape)}")
                    per_output[index].append(np.array(mat, dtype=np.float32, copy=True))
        return [np.stack(maps) for maps in per_output]

    def close(self) -> None:
        self.net.clear()
