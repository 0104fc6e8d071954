"""`litedet.load(weights)(source)`: the Python API on every source kind and every engine file,
results a person uses (boxes, names, JSON, drawing, saving), streaming, options and errors."""

from __future__ import annotations

import importlib.util
import inspect
import json
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import litedet
from litedet.data.sources import open_source
from litedet.engine.predictor import Predictor

from conftest import require_shared
from test_sources import _write_video

SIZE = 64


def _image(seed: int, height: int = 48, width: int = 80) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = cv2.resize(rng.integers(0, 255, (6, 10, 3), dtype=np.uint8), (width, height), interpolation=cv2.INTER_LINEAR)
    cv2.rectangle(image, (10 + seed, 8), (40 + seed, 30), (20 * seed % 255, 200, 90), -1)
    return image


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A folder of three images, one video of 7 frames, and a tiny v5lite-e whose head is biased
    to find class-0 objects everywhere (so results are never empty), as .safetensors and .onnx."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from litedet.export.api import export_model
    from litedet.models.checkpoint import save_checkpoint_weights

    root = tmp_path_factory.mktemp("api")
    folder = root / "images"
    folder.mkdir()
    for i in range(3):
        assert cv2.imwrite(str(folder / f"img{i}.png"), _image(i))
    video = _write_video(root / "clip.mp4", 7)
    torch.manual_seed(0)
    model = litedet.create_model("v5lite-e", input_size=SIZE).eval()
    with torch.no_grad():
        for conv in model.head.convs:  # objectness and class 0 logits +4: every anchor is a candidate
            bias = conv.bias.view(model.head.num_anchors, -1)
            bias[:, 4] = 4.0
            bias[:, 5] = 4.0
    weights = save_checkpoint_weights(model, root / "tiny.safetensors")
    onnx = export_model(weights, "onnx", root / "onnx").path
    return {"root": root, "folder": folder, "video": video, "weights": weights, "onnx": onnx}


@pytest.fixture(scope="module")
def onnx_model(files):
    with litedet.load(files["onnx"], threads=1) as model:
        yield model


def test_every_source_kind(files, onnx_model):
    folder, video = files["folder"], files["video"]
    images = sorted(str(p) for p in folder.iterdir())
    assert [r.source for r in onnx_model(images[0])] == images[:1]
    assert [r.source for r in onnx_model(folder)] == images
    assert [r.source for r in onnx_model(str(folder / "*.png"))] == images
    assert [r.source for r in onnx_model(video)] == [f"{video}:{i}" for i in range(7)]
    assert [r.source for r in onnx_model(video, max_frames=3)] == [f"{video}:{i}" for i in range(3)]
    array = cv2.imread(images[1])
    from_array, from_path = onnx_model(array)[0], onnx_model(images[1])[0]
    np.testing.assert_array_equal(from_array.boxes, from_path.boxes)
    assert from_array.image_shape == array.shape[:2] and from_array.image is array
    batch = onnx_model(np.stack([array, array]))
    assert len(batch) == 2 and all(np.array_equal(r.boxes, from_path.boxes) for r in batch)
    mixed = onnx_model([images[0], array, video], max_frames=4)
    assert [r.source for r in mixed] == [images[0], "", f"{video}:0", f"{video}:1"]
    grey = onnx_model(cv2.cvtColor(array, cv2.COLOR_BGR2GRAY))[0]
    assert grey.image_shape == array.shape[:2]


def test_pil_image_is_read_as_rgb(files, onnx_model):
    image_module = pytest.importorskip("PIL.Image")
    path = sorted(files["folder"].iterdir())[0]
    pil = image_module.open(path)
    np.testing.assert_array_equal(onnx_model(pil)[0].boxes, onnx_model(path)[0].boxes)


def test_results_have_what_a_user_reads(files, onnx_model, tmp_path):
    path = sorted(files["folder"].iterdir())[0]
    result = onnx_model(path)[0]
    assert len(result) > 0 and result.names == onnx_model.names and len(result.names) == 80
    assert result.boxes.shape == (len(result), 4) and result.boxes.dtype == np.float32
    assert result.scores.shape == (len(result),) and result.class_ids.dtype == np.int64
    assert set(result.class_ids.tolist()) == {0} and result.class_names[0] == "person"
    height, width = result.image_shape
    assert (result.boxes[:, [0, 2]] <= width).all() and (result.boxes[:, [1, 3]] <= height).all()
    payload = json.loads(json.dumps(result.to_json()))
    assert payload["source"] == str(path) and len(payload["detections"]) == len(result)
    drawn = result.draw()
    assert drawn.shape == result.image.shape and not np.array_equal(drawn, result.image)
    saved = result.save(tmp_path / "out")  # a folder: the source's file name
    assert saved == tmp_path / "out" / path.name and cv2.imread(str(saved)).shape == drawn.shape
    named = result.save(tmp_path / "annotated.jpg")
    assert named.is_file()
    frame = onnx_model(files["video"], max_frames=1)[0]
    assert frame.save(tmp_path).name == "clip_0.jpg"
    with pytest.raises(ValueError, match="no image kept"):
        litedet.Detections(result.boxes, result.scores, result.class_ids, result.names).draw()


def test_stream_yields_one_frame_at_a_time_and_closes_the_source(files, onnx_model, monkeypatch):
    opened = []
    original = open_source

    def spy(*args, **kwargs):
        source = original(*args, **kwargs)
        opened.append(source)
        return source

    monkeypatch.setattr("litedet.api.open_source", spy)
    stream = onnx_model.stream(files["video"])
    assert inspect.isgenerator(stream) and len(opened) == 1  # opened now, read lazily
    assert opened[0].stats.frames == 0
    first = next(stream)
    assert first.source.endswith(":0") and opened[0].stats.frames == 1
    stream.close()
    assert opened[0]._capture is None  # the video capture was released
    via_call = onnx_model(files["video"], stream=True, max_frames=2)
    assert inspect.isgenerator(via_call) and len(list(via_call)) == 2
    with pytest.raises(FileNotFoundError, match="nothere"):
        onnx_model.stream(files["root"] / "nothere.jpg")  # fails at the call, not at the first next()


def test_a_long_video_runs_pipelined_in_two_streams_with_frame_by_frame_results(files, tmp_path, monkeypatch):
    import litedet.api as api

    video = _write_video(tmp_path / "long.mp4", 30)
    reports = []
    original = api.detect_source

    def spy(*args, **kwargs):
        reports.append(original(*args, **kwargs))
        return reports[-1]

    monkeypatch.setattr(api, "detect_source", spy)
    with litedet.load(files["onnx"], threads=2) as model:
        results = model(video)
        assert len(reports) == 1 and reports[0].streams == 2  # a throughput job: two inference streams
        single = [model.predict(frame.image)[0] for frame in open_source(video)]  # arrays: frame by frame
        assert [r.source for r in results] == [f"{video}:{i}" for i in range(30)]
        for piped, alone in zip(results, single):
            np.testing.assert_array_equal(piped.boxes, alone.boxes)
            np.testing.assert_array_equal(piped.scores, alone.scores)
            assert piped.image is not None and piped.image.shape == alone.image.shape
        assert len(model(video, max_frames=25)) == 25
        # a short video keeps the frame-by-frame loop
        assert len(model(files["video"])) == 7 and len(reports) == 2

        stream = model.stream(video)
        assert next(stream).source.endswith(":0")
        stream.close()  # stops the pipeline: its threads end, the engine copies are closed
        deadline = time.monotonic() + 10
        while _litedet_threads() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _litedet_threads() == []


def _litedet_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("litedet-")]


def test_an_error_inside_the_pipeline_reaches_the_caller(files, tmp_path, monkeypatch):
    video = _write_video(tmp_path / "long.mp4", 30)
    with litedet.load(files["onnx"], threads=1) as model:
        calls = {"n": 0}
        run = model.backend.run

        def failing(batch):
            calls["n"] += 1
            if calls["n"] == 12:
                raise RuntimeError("engine failed on frame 11")
            return run(batch)

        monkeypatch.setattr(model.backend, "run", failing)
        stream = model.stream(video)
        got = []
        with pytest.raises(RuntimeError, match="engine failed on frame 11"):
            for result in stream:
                got.append(result)
        assert 0 < len(got) <= 11


def test_call_options_override_load_defaults(files, onnx_model):
    path = sorted(files["folder"].iterdir())[0]
    default = onnx_model(path)[0]
    strict = onnx_model(path, conf=0.999)[0]
    assert len(strict) < len(default)
    assert len(onnx_model(path, max_det=2)[0]) == 2
    assert len(onnx_model(path, classes=["car"])[0]) == 0
    assert len(onnx_model(path)[0]) == len(default)  # the load defaults are back
    with litedet.load(files["onnx"], threads=1, conf=0.999) as strict_model:
        assert len(strict_model(path)[0]) == len(strict)
    with pytest.raises(ValueError, match="unknown class 'zebra-crossing'"):
        onnx_model(path, classes=["zebra-crossing"])
    with pytest.raises(ValueError, match="conf must be in"):
        onnx_model(path, conf=2.0)


def test_torch_and_onnx_files_run_the_same_network(files, onnx_model):
    from litedet.engine.predictor import Predictor

    with litedet.load(files["weights"], threads=1, device="cpu") as torch_model:
        assert torch_model.engine == "torch" and onnx_model.engine == "onnxruntime"
        assert "engine torch" in repr(torch_model) and "v5lite-e" in repr(torch_model)
        for path in sorted(files["folder"].iterdir()):
            a, b = torch_model(path)[0], onnx_model(path)[0]
            assert len(a) > 0 and len(b) > 0 and a.image_shape == b.image_shape
            # The biased head scores every anchor about alike, so which box survives NMS may
            # differ on float noise; the raw maps of the two files must not.
            batch = Predictor(torch_model.backend).preprocess(a.image)[0].copy()
            for ours, reference in zip(torch_model.backend.run(batch), onnx_model.backend.run(batch)):
                np.testing.assert_allclose(ours, reference, atol=1e-3, rtol=1e-3)


def test_load_options_from_the_sidecar_and_imgsz(files):
    with litedet.load(files["onnx"]) as model:
        assert model.input_size == (SIZE, SIZE) and model.config.model == "v5lite-e"
    with litedet.load(files["weights"], imgsz=96, threads=1) as model:
        assert model.input_size == (96, 96)
        assert len(model(sorted(files["folder"].iterdir())[0])[0]) > 0


def test_errors_say_what_is_wrong(files, onnx_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        litedet.load(tmp_path / "missing.onnx")
    with pytest.raises(FileNotFoundError, match=r"create_model\('v5lite-s'\)"):
        litedet.load("v5lite-s")
    bare = tmp_path / "bare.onnx"
    bare.write_bytes(files["onnx"].read_bytes())
    with pytest.raises(FileNotFoundError, match="no model config beside it"):
        litedet.load(bare)
    with pytest.raises(ValueError, match="does not match"):
        litedet.load(files["onnx"], model="v5lite-s")
    with pytest.raises(ValueError, match="camera or stream: give max_frames"):
        onnx_model(0)
    with pytest.raises(ValueError, match="cannot detect on a dict"):
        onnx_model({"image": 1})
    with pytest.raises(ValueError, match="uint8"):
        onnx_model(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="empty list"):
        onnx_model([])
    with pytest.raises(ValueError, match="max_frames must be >= 1"):
        onnx_model(files["video"], max_frames=0)
    from litedet.engine.predictor import Predictor

    with pytest.raises(ValueError, match=r"use litedet.load\(weights\)\(source\)"):
        Predictor(onnx_model.backend).predict(str(files["video"]))


def test_device_errors_name_the_device(files):
    with pytest.raises(ValueError, match="onnxruntime: unknown device 'tpu'"):
        litedet.load(files["onnx"], device="tpu")
    with pytest.raises(ValueError, match="torch: unknown device 'bogus'"):
        litedet.load(files["weights"], device="bogus")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA device"):
            litedet.load(files["weights"], device="cuda")
    with litedet.load(files["onnx"], device="cpu", threads=1) as model:
        assert model.backend.session.get_providers() == ["CPUExecutionProvider"]


def test_open_source_honours_max_frames_for_videos_and_folders(files):
    with open_source(files["video"], max_frames=3) as source:
        assert source.total == 3 and len(list(source)) == 3
    with open_source(files["folder"], max_frames=2) as source:
        assert source.total == 2 and [Path(f.source).name for f in source] == ["img0.png", "img1.png"]
    with open_source(str(files["folder"] / "*.png"), max_frames=1) as source:
        assert len(list(source)) == 1


def test_detect_writes_what_litedet_detect_writes(files, onnx_model, tmp_path):
    report = onnx_model.detect(files["video"], tmp_path / "run", max_frames=4)
    assert report.frames == 4
    lines = (tmp_path / "run" / "detections.jsonl").read_text().splitlines()
    assert [json.loads(line)["source"] for line in lines] == [f"{files['video']}:{i}" for i in range(4)]


def test_top_level_names_are_documented_and_lazy():
    assert set(litedet.__all__) >= {"load", "Model", "Detections", "create_model", "list_models", "__version__"}
    for name in litedet.__all__:
        value = getattr(litedet, name)
        if name != "__version__":
            assert inspect.getdoc(value), f"litedet.{name} has no docstring"
    for name in ("load", "Model.predict", "Model.stream", "Model.detect", "Detections.save", "Detections.draw"):
        owner, _, attribute = name.partition(".")
        target = getattr(getattr(litedet, owner), attribute) if attribute else getattr(litedet, owner)
        assert inspect.getdoc(target), f"litedet.{name} has no docstring"
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        litedet.nothing_here  # noqa: B018
    assert "load" in dir(litedet)


def test_real_model_finds_people_in_a_coco_image(tmp_path):
    pytest.importorskip("torch")
    param = require_shared("weights", "yolov5-lite", "v5lite-s.ncnn.param")
    image = require_shared("data", "coco256", "images", "val2017", "000000000139.jpg")
    from litedet.models.ncnn_import import import_ncnn_weights

    weights, _ = import_ncnn_weights(param, "v5lite-s", tmp_path / "v5lite-s.safetensors")
    with litedet.load(weights, threads=1) as model:
        result = model(image)[0]
        assert "person" in result.class_names and result.scores.max() > 0.5
        people = model(image, classes=["person"])[0]
        assert set(people.class_names) == {"person"} and len(people) == result.class_names.count("person")


def test_http_image_url(files, onnx_model):
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(files["folder"]))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)  # loopback only
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/img1.png"
        from_url = onnx_model(url)[0]
        assert from_url.source == url
        np.testing.assert_array_equal(from_url.boxes, onnx_model(files["folder"] / "img1.png")[0].boxes)
    finally:
        server.shutdown()
        server.server_close()


def test_engine_given_for_a_file_it_does_not_open_is_one_line_openvino_reads_onnx(files, onnx_model):
    with pytest.raises(ValueError, match=r"model.onnx: the ncnn engine opens .param files, not .onnx; "
                                         r"`litedet export --format ncnn` makes one"):
        litedet.load(files["onnx"], engine="ncnn")
    with pytest.raises(ValueError, match="the torch engine opens .safetensors files, not .onnx"):
        litedet.load(files["onnx"], engine="torch")
    if importlib.util.find_spec("openvino") is None:
        return
    image = sorted(files["folder"].iterdir())[0]
    with litedet.load(files["onnx"], engine="openvino", threads=1) as model:
        assert model.engine == "openvino"
        batch = Predictor(model.backend).preprocess(cv2.imread(str(image)))[0].copy()
        for ours, reference in zip(model.backend.run(batch), onnx_model.backend.run(batch)):
            np.testing.assert_allclose(ours, reference, atol=2e-3, rtol=1e-3)


def test_a_size_a_fixed_size_model_cannot_take_fails_at_load_naming_the_file(files, tmp_path):
    height, width = litedet.load(files["onnx"], threads=1).input_size
    with pytest.raises(ValueError, match=rf"model.onnx takes only {height}x{width} images \(exported without "
                                         rf"--dynamic\), not {height + 32}x{width}: re-export"):
        litedet.load(files["onnx"], imgsz=(height + 32, width))
    local = tmp_path / "model.onnx"
    local.write_bytes(Path(files["onnx"]).read_bytes())
    config = json.loads(Path(files["onnx"]).with_suffix(".json").read_text())
    config["input_size"] = [height + 32, width]
    local.with_suffix(".json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"takes {height}x{width} images but its .json sidecar says input_size "
                                         rf"{height + 32}x{width}"):
        litedet.load(local)
    config["input_size"] = [height + 1, width]
    local.with_suffix(".json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"model.json: bad model config: input_size \[{height + 1}, {width}\] must "
                                         "be multiples of 32"):
        litedet.load(local)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["openvino", "ncnn"])
def test_openvino_and_ncnn_files_open_the_same_way(files, onnx_model, fmt, tmp_path):
    """Every engine file litedet writes opens with load and detects what the ONNX file does
    (slow: an OpenVINO or ncnn export)."""
    pytest.importorskip(fmt)
    from litedet.engine.predictor import Predictor
    from litedet.export.api import export_model

    path = export_model(files["weights"], fmt, tmp_path).path
    with litedet.load(path, threads=1) as model:
        assert model.engine == fmt and model.names == onnx_model.names
        for image in sorted(files["folder"].iterdir()):
            a, b = model(image)[0], onnx_model(image)[0]
            assert len(a) > 0 and a.image_shape == b.image_shape
            # The same network: the raw maps agree. (The biased head scores every anchor about
            # alike, so NMS survivors may differ between engines on float noise; maps do not.)
            batch = Predictor(model.backend).preprocess(a.image)[0].copy()
            for ours, reference in zip(model.backend.run(batch), onnx_model.backend.run(batch)):
                np.testing.assert_allclose(ours, reference, atol=2e-3, rtol=1e-3)
