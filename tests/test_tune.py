"""`litedet tune`: candidate search, Pareto front, budget choice, caching and the deployable bundle.
Behaviour only: latencies come from a fake measurer or are never compared."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import random_bn_detector, require_shared
from litedet.tuner import (
    Choice,
    TuneCandidate,
    choose,
    enumerate_candidates,
    pair_with_budget_peer,
    pareto_front,
    parse_sizes,
    plan_accuracy,
    tune,
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny v5lite-e checkpoint (64 px, 80 COCO classes) with its sidecar."""
    from litedet.models.checkpoint import save_checkpoint_weights

    path = tmp_path_factory.mktemp("tune") / "tiny.safetensors"
    model = random_bn_detector("v5lite-e", 64)
    save_checkpoint_weights(model, path)
    return path


# ------------------------------------------------------------------------------ search


def test_parse_sizes_ranges_lists_and_mixes():
    assert parse_sizes("256:512:32") == [256, 288, 320, 352, 384, 416, 448, 480, 512]
    assert parse_sizes("320,416") == [320, 416]
    assert parse_sizes("256:320:32,416,320") == [256, 288, 320, 416]
    assert parse_sizes("256:320") == [256, 288, 320]  # step 32 by default
    assert parse_sizes(416) == [416]


@pytest.mark.parametrize("bad", ["", "320:256:32", "a:b", "16", "256:512:0", "1:2:3:4"])
def test_parse_sizes_rejects_bad_specs(bad):
    with pytest.raises(ValueError, match="imgsz"):
        parse_sizes(bad)


def test_candidates_cover_what_the_machine_supports(checkpoint):
    notes: list[str] = []
    found = enumerate_candidates([checkpoint], [64, 80, 96], ["onnxruntime", "openvino", "ncnn"],
                                 ["fp32", "bf16", "int8"], [1, 2], bf16=True, notes=notes)
    # per size: ORT fp32 + int8, OpenVINO fp32 + bf16 + int8, ncnn fp32; 80 is not a stride multiple
    assert len(found) == 2 * 6 * 2
    assert {c.imgsz for c in found} == {64, 96}
    assert {(c.engine, c.precision) for c in found} == {
        ("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"), ("openvino", "bf16"),
        ("openvino", "int8"), ("ncnn", "fp32")}
    assert len({c.key for c in found}) == len(found)
    assert any("[80]" in n and "stride 32" in n for n in notes)
    assert any(n.startswith("int8 runs on onnxruntime, openvino only") for n in notes)


def test_no_bf16_candidates_without_cpu_support(checkpoint):
    notes: list[str] = []
    found = enumerate_candidates([checkpoint], [64], ["openvino"], ["fp32", "bf16"], [2], bf16=False, notes=notes)
    assert [(c.engine, c.precision) for c in found] == [("openvino", "fp32")]
    assert any("bf16 skipped" in n for n in notes)


def test_candidate_errors_name_the_problem(tmp_path, checkpoint):
    with pytest.raises(ValueError, match="unknown engine"):
        enumerate_candidates([checkpoint], [64], ["tensorrt"], ["fp32"], [1], bf16=False)
    with pytest.raises(ValueError, match="unknown precision"):
        enumerate_candidates([checkpoint], [64], ["onnxruntime"], ["fp8"], [1], bf16=False)
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        enumerate_candidates([tmp_path / "nothing.safetensors"], [64], ["onnxruntime"], ["fp32"], [1], bf16=False)
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"x")
    with pytest.raises(ValueError, match="litedet import"):
        enumerate_candidates([onnx], [64], ["onnxruntime"], ["fp32"], [1], bf16=False)


# ------------------------------------------------------------------------------ decisions


def _r(key, ms, m=None, kind="litedet", precision="fp32", tag="w", size=64, engine="onnxruntime"):
    return {"key": key, "kind": kind, "median_ms": ms, "map50_95": m, "precision": precision, "weights_tag": tag,
            "imgsz": size, "engine": engine, "model": key}


def test_pareto_front_keeps_only_undominated_rows():
    rows = [_r("a", 5, 0.20), _r("b", 6, 0.19), _r("c", 7, 0.25), _r("d", 7, 0.24), _r("e", 9, 0.25),
            _r("f", 10, 0.30), _r("g", 4, None)]
    assert [r["key"] for r in pareto_front(rows)] == ["a", "c", "f"]
    assert pareto_front([]) == []


def test_choice_is_the_most_accurate_within_the_budget():
    rows = [_r("a", 5, 0.20), _r("c", 7, 0.25), _r("f", 10, 0.30), _r("peer", 8, 0.40, kind="peer")]
    choice = choose(rows, 8.0)
    assert choice.row["key"] == "c" and choice.miss_ms is None
    assert "c: mAP50-95 0.250 at 7.00 ms" in choice.message
    assert choose(rows, 10.0).row["key"] == "f"  # the budget is inclusive
    # a tie in accuracy goes to the faster
    assert choose([_r("slow", 6, 0.3), _r("fast", 5, 0.3)], 8).row["key"] == "fast"


def test_nothing_meets_the_budget_says_by_how_much():
    rows = [_r("a", 5, 0.20), _r("c", 7, 0.25)]
    choice = choose(rows, 4.0)
    assert isinstance(choice, Choice) and choice.row is None
    assert choice.miss_ms == pytest.approx(1.0)
    assert "nothing meets the budget of 4.00 ms" in choice.message
    assert "a, takes 5.00 ms, 1.00 ms (25%) over" in choice.message


def test_accuracy_only_where_it_can_matter():
    rows = [
        _r("e-int8", 3, precision="int8", tag="e"),
        _r("e-ort", 4, tag="e"),
        _r("e-ov-bf16", 4.5, precision="bf16", tag="e", engine="openvino"),  # fp32 of e already scored: bound 0.2
        _r("e-ncnn", 5, tag="e", engine="ncnn"),  # same fp32 network as e-ort
        _r("s-ort", 6, tag="s"),
        _r("s-int8", 6.5, precision="int8", tag="s"),  # slower than its fp32: bound = s fp32
        _r("s-big", 20, tag="s", size=96),  # over the budget
    ]
    truth = {"e-int8": 0.18, "e-ort": 0.20, "s-ort": 0.30, "s-big": 0.35}
    scored = []

    def score(row):
        scored.append(row["key"])
        row["map50_95"] = truth[row["key"]]
        return row["map50_95"]

    visited = []
    plan_accuracy(rows, 10.0, whole_front=False, score=score, on_visit=lambda row: visited.append(row["key"]))
    assert scored == ["e-int8", "e-ort", "s-ort"]
    assert visited == [r["key"] for r in sorted(rows, key=lambda r: r["median_ms"])]  # each decided once, by latency
    why = {r["key"]: r["accuracy"] for r in rows}
    assert why["e-ncnn"].startswith("not scored: same fp32 network as the faster e-ort")
    assert why["e-ov-bf16"].startswith("not scored: its fp32 network scores 0.200")
    assert why["s-int8"].startswith("not scored: its fp32 network scores 0.300")
    assert why["s-big"] == "not scored: over the budget"
    scored.clear()
    for r in rows:
        r["map50_95"] = truth.get(r["key"]) if r["accuracy"] == "scored" else None
    plan_accuracy(rows, 10.0, whole_front=True, score=score)
    assert "s-big" in scored


def test_a_budget_peer_timed_in_the_same_run_is_compared_round_by_round():
    # a machine whose speed flips between stretches: the peer happened to land in more fast
    # rounds, so its median (10.0) is below the candidate's (11.0) though the candidate is
    # quicker in every single round
    fast, slow = [(r, 6.0) for r in range(0, 6)], [(r, 12.0) for r in range(6, 12)]
    peer = {**_r("peer", 10.0, 0.30, kind="peer"), "measured_at": "t1",
            "rounds": [(r, ms / 0.9) for r, ms in fast + slow]}
    quick = {**_r("quick", 11.0, 0.28, tag="q"), "measured_at": "t1", "rounds": fast + slow}
    slower = {**_r("slower", 9.5, 0.29, tag="s"), "measured_at": "t1", "rounds": [(r, ms * 1.2) for r, ms in fast + slow]}
    cached = {**_r("cached", 9.0, 0.27, tag="c"), "measured_at": "t0", "rounds": fast}  # another run: medians
    rows = [peer, quick, slower, cached]
    assert pair_with_budget_peer(rows, peer) == 2
    assert quick["vs_budget_peer"]["ratio"] == pytest.approx(1 / 0.9)
    assert slower["vs_budget_peer"]["ratio"] == pytest.approx(1 / 0.9 / 1.2)
    assert cached["vs_budget_peer"] is None and peer["vs_budget_peer"] is None
    choice = choose(rows, peer["median_ms"])
    # by medians "slower" (9.5 ms) would win on accuracy; round by round it is over the budget
    assert choice.row is quick
    assert "round by round the budget peer takes 1.11x its time" in choice.message
    scored = []
    plan_accuracy(rows, peer["median_ms"], whole_front=False, score=lambda row: scored.append(row["key"]) or 0.1)
    assert slower["accuracy"] == "not scored: over the budget"
    assert sorted(scored) == ["cached", "quick"]
    # too few shared rounds: no pairing
    lone = {**_r("lone", 8.0, 0.2), "measured_at": "t1", "rounds": [(40, 8.0), (41, 8.0)]}
    assert pair_with_budget_peer([lone], peer) == 0 and lone["vs_budget_peer"] is None


# ------------------------------------------------------------------------------ caching


class FakeMeasurer:
    """Latency grows with size and falls with INT8; accuracy grows with size. Counts every call."""

    def __init__(self, engine_file: Path) -> None:
        self.timed: list[str] = []
        self.scored: list[str] = []
        self.file = engine_file

    def latency(self, candidates):
        self.timed += [c.key for c in candidates]
        out = {}
        for c in candidates:
            ms = c.imgsz / 16 * (0.6 if c.precision == "int8" else 1.0) * (1.1 if c.engine == "openvino" else 1.0)
            out[c.key] = {"median_ms": ms, "p90_ms": ms * 1.1, "n": 10, "other_load": 3.0, "disturbed": False}
        return out

    def accuracy(self, c: TuneCandidate):
        self.scored.append(c.key)
        return {"map50_95": c.imgsz / 1000 - (0.01 if c.precision == "int8" else 0.0), "map50": c.imgsz / 500,
                "images": 2}

    def engine_file(self, c: TuneCandidate) -> Path:
        return self.file


@pytest.fixture()
def tiny_coco(tmp_path) -> tuple[Path, Path]:
    import cv2

    folder = tmp_path / "images"
    folder.mkdir()
    images, annotations = [], []
    for i in range(2):
        cv2.imwrite(str(folder / f"{i}.jpg"), np.full((48, 64, 3), 40 * i, np.uint8))
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "width": 64, "height": 48})
        annotations.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [4, 4, 20, 20], "area": 400,
                            "iscrowd": 0})
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "person"}]}))
    return folder, path


def test_second_run_measures_only_what_is_new(tmp_path, checkpoint, tiny_coco):
    images, annotations = tiny_coco
    fake = FakeMeasurer(checkpoint)
    common = dict(images=images, annotations=annotations, engines="onnxruntime,openvino", precisions="fp32,int8",
                  threads=[1], peers="", out_dir=tmp_path / "out", calib=images, measurer=fake, progress=False)
    first = tune([checkpoint], budget_ms=4.5, imgsz="64", **common)
    assert len(fake.timed) == 4  # ORT fp32 + int8, OpenVINO fp32 + int8 at 64
    assert first.counts["latency_measured"] == 4 and first.counts["latency_cached"] == 0
    assert first.choice.row["key"].endswith("onnxruntime fp32 t1")  # 4.0 ms; int8 2.4 ms but less accurate
    # OpenVINO fp32 (4.4 ms) computes what ORT fp32 does, slower: not scored; each INT8 build is
    assert sorted(fake.scored) == sorted(["v5lite-e@64 onnxruntime int8 t1", "v5lite-e@64 onnxruntime fp32 t1",
                                          "v5lite-e@64 openvino int8 t1"])

    fake.timed.clear(), fake.scored.clear()
    second = tune([checkpoint], budget_ms=10, imgsz="64,96,128", **common)  # wider budget, two new sizes
    assert sorted(fake.timed) == sorted(f"v5lite-e@{size} {build} t1" for size in (96, 128) for build in (
        "onnxruntime fp32", "onnxruntime int8", "openvino fp32", "openvino int8"))
    assert second.counts["latency_cached"] == 4
    assert "v5lite-e@64 onnxruntime fp32 t1" not in fake.scored  # read from the cache
    assert second.counts["accuracy_cached"] == 3
    # fp32@128 (8 ms, 0.128) beats int8@128 (4.8 ms, 0.118) and everything else within 10 ms
    assert second.choice.row["key"] == "v5lite-e@128 onnxruntime fp32 t1"
    assert second.choice.row["map50_95"] == max(r["map50_95"] for r in second.rows
                                                 if r["median_ms"] <= 10 and r["map50_95"] is not None)

    fake.timed.clear(), fake.scored.clear()
    tune([checkpoint], budget_ms=10, imgsz="64,96,128", **common)
    assert fake.timed == [] and fake.scored == []  # everything cached
    tune([checkpoint], budget_ms=10, imgsz="64,96,128", remeasure=True, **common)
    assert len(fake.timed) == 12 and fake.scored == []


def test_outputs_and_nothing_meets_the_budget(tmp_path, checkpoint, tiny_coco):
    images, annotations = tiny_coco
    fake = FakeMeasurer(checkpoint)
    out = tmp_path / "out"
    result = tune([checkpoint], images=images, annotations=annotations, budget_ms=10, imgsz="64,96",
                  engines="onnxruntime", precisions="fp32", threads=[2], peers="", out_dir=out, measurer=fake,
                  progress=False)
    assert result.choice.row["key"] == "v5lite-e@96 onnxruntime fp32 t2"
    assert (out / "report.md").is_file() and (out / "pareto.png").stat().st_size > 0
    front = json.loads((out / "front.json").read_text())
    assert front["front"] == ["v5lite-e@64 onnxruntime fp32 t2", "v5lite-e@96 onnxruntime fp32 t2"]
    assert front["choice"]["key"] == result.choice.row["key"]
    assert sorted(p.name for p in (out / "best").iterdir()) == ["tiny.json", "tiny.safetensors"]
    assert result.commands[0].startswith(f"litedet detect --weights {out / 'best' / 'tiny.safetensors'} --threads 2")
    assert "## Pareto front" in (out / "report.md").read_text()

    slow = tune([checkpoint], images=images, annotations=annotations, min_fps=1000, imgsz="64", engines="onnxruntime",
                precisions="fp32", threads=[2], peers="", out_dir=tmp_path / "slow", measurer=fake, progress=False)
    assert slow.choice.row is None and slow.choice.miss_ms == pytest.approx(3.0)
    assert "nothing meets the budget of 1.00 ms" in (tmp_path / "slow" / "report.md").read_text()
    assert not (tmp_path / "slow" / "best").exists()


def test_tune_checks_its_arguments(tmp_path, checkpoint, tiny_coco):
    images, annotations = tiny_coco
    base = dict(images=images, annotations=annotations, engines="onnxruntime", peers="", out_dir=tmp_path,
                measurer=FakeMeasurer(checkpoint), progress=False)
    with pytest.raises(ValueError, match="exactly one budget"):
        tune([checkpoint], budget_ms=5, min_fps=30, **base)
    with pytest.raises(ValueError, match="int8 needs calibration"):
        tune([checkpoint], budget_ms=5, precisions="int8", imgsz="64", **base)
    with pytest.raises(ValueError, match="budget peer 'nanodet-plus-m-416' is not among"):
        tune([checkpoint], budget_peer="nanodet-plus-m-416", imgsz="64", **base)


def test_cli_requires_one_budget(capsys):
    from litedet.cli import main

    with pytest.raises(SystemExit):
        main(["tune", "--weights", "x.safetensors", "--data", "d.yaml"])
    assert "one of the arguments --budget-ms --min-fps --budget-peer is required" in capsys.readouterr().err


# ------------------------------------------------------------------------------ the real thing, small


def test_bundle_loads_and_detects_on_real_images(tmp_path, checkpoint, capsys):
    """Export, time, score and bundle a tiny model on ONNX Runtime with two coco256 val images;
    the bundle opens through `litedet detect`."""
    images = require_shared("data", "coco256", "images", "val2017")
    annotations = require_shared("data", "coco256", "annotations", "instances_val2017.json")
    from litedet.cli import main

    out = tmp_path / "run"
    result = tune([checkpoint], images=images, annotations=annotations, budget_ms=10_000, imgsz="64",
                  engines="onnxruntime", precisions="fp32", threads=[1], peers="", out_dir=out, runs=3, warmup=1,
                  val_limit=2, progress=False)
    row = result.choice.row
    assert row["key"] == "v5lite-e@64 onnxruntime fp32 t1" and row["n"] == 3 and row["map50_95"] is not None
    best = out / "best" / "model_uint8.onnx"  # tune ships what it timed: the uint8-input export
    assert best.is_file() and (out / "best" / "model_uint8.json").is_file()
    assert main(["detect", "--weights", str(best), "--source", str(sorted(images.iterdir())[0]), "--json",
                 "--no-progress", "--threads", "1"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    record = record[0] if isinstance(record, list) else record
    assert record["source"].endswith("000000000139.jpg") and isinstance(record["detections"], list)


def test_dataset_yaml_scores_val_and_calibrates_on_train(tmp_path):
    require_shared("data", "coco256")
    from litedet.tuner import resolve_data

    data = resolve_data(Path(__file__).resolve().parents[1] / "configs" / "data" / "coco256.yaml", None, None, None,
                        tmp_path)
    assert data.calibration.endswith("coco256.yaml")  # quantize reads its train split
    files = data.image_files()
    assert len(files) == 128 and all("val2017" in str(f) for f in files)
    assert len(data.latency_images(3)) == 3
    again = resolve_data(Path(__file__).resolve().parents[1] / "configs" / "data" / "coco256.yaml", None, None, None,
                         tmp_path, limit=8)
    assert again.tag != data.tag  # a different number of scored images is a different cache key


def test_keys_are_unique_across_checkpoints_and_peers(tmp_path, checkpoint):
    import shutil

    from litedet.config import sidecar_path
    from litedet.tuner import peer_candidates

    other = tmp_path / "finetuned.safetensors"
    shutil.copy(checkpoint, other)
    shutil.copy(sidecar_path(checkpoint), sidecar_path(other))
    found = enumerate_candidates([checkpoint, other], [64], ["onnxruntime"], ["fp32"], [1], bf16=False)
    assert [c.key for c in found] == ["v5lite-e[tiny]@64 onnxruntime fp32 t1", "v5lite-e[finetuned]@64 onnxruntime fp32 t1"]
    with pytest.raises(ValueError, match="given twice"):
        enumerate_candidates([checkpoint, checkpoint], [64], ["onnxruntime"], ["fp32"], [1], bf16=False)
    require_shared("weights", "yolov5-lite", "v5lite-e.ncnn.param")
    peers = peer_candidates(["v5lite-ncnn"], [2], [])
    mine = enumerate_candidates([checkpoint], [320], ["ncnn"], ["fp32"], [2], bf16=False)
    assert mine[0].key == "v5lite-e@320 ncnn fp32 t2"
    assert "v5lite-e@320 ncnn fp32 t2 (published)" in [c.key for c in peers]  # a peer never shadows a candidate


def test_ncnn_commands_carry_the_openmp_waiting_they_were_timed_with(monkeypatch, tmp_path, tiny_coco):
    from litedet.tuner import TuneData, deploy_commands

    images, annotations = tiny_coco
    data = TuneData(images, annotations, "tag", None)
    ncnn = TuneCandidate("litedet", "v5lite-s", "w.safetensors", "t", 512, "ncnn", "fp32", 2)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert deploy_commands(tmp_path / "model_ncnn.param", ncnn, data)[0].startswith("litedet detect")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    commands = deploy_commands(tmp_path / "model_ncnn.param", ncnn, data)
    assert all(c.startswith("OMP_WAIT_POLICY=PASSIVE litedet ") for c in commands) and len(commands) == 2
    bf16 = TuneCandidate("litedet", "v5lite-s", "w.safetensors", "t", 512, "openvino", "bf16", 2)
    (only,) = deploy_commands(tmp_path / "model_openvino.xml", bf16, data)  # bench opens engine files at fp32
    assert only.startswith("litedet detect") and "--precision bf16" in only


def test_a_validation_limit_below_one_is_refused_before_any_work(tmp_path, checkpoint):
    with pytest.raises(ValueError, match="val_limit must be >= 1"):
        tune([checkpoint], budget_ms=10, val_limit=0, out_dir=tmp_path / "t")
    assert not (tmp_path / "t").exists()
