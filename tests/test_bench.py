"""Benchmark harness, peers, reports and the guideline experiments: behaviour only, never timing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from litedet.bench import harness
from litedet.bench.harness import Candidate, LoadMonitor, measure_interleaved, measure_latency, summarize


# --------------------------------------------------------------------------- statistics


def test_summarize_known_values():
    times = [i / 1000 for i in range(1, 11)]  # 1..10 ms
    stats = summarize(times)
    assert stats.n == 10
    assert stats.median_ms == pytest.approx(5.5)
    assert stats.p90_ms == pytest.approx(9.1)  # numpy linear interpolation
    assert stats.mean_ms == pytest.approx(5.5)
    assert stats.std_ms == pytest.approx(np.std(np.arange(1, 11), ddof=1))
    assert stats.min_ms == pytest.approx(1.0) and stats.max_ms == pytest.approx(10.0)
    assert stats.total_s == pytest.approx(0.055)


def test_summarize_is_robust_to_outliers():
    times = [0.010] * 99 + [5.0]
    stats = summarize(times)
    assert stats.median_ms == pytest.approx(10.0)
    assert stats.p90_ms == pytest.approx(10.0)
    assert stats.mean_ms > 50  # the mean is not, which is why the median is reported


@pytest.mark.parametrize("bad", [[], [float("nan")], [-1.0]])
def test_summarize_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        summarize(bad)


def test_measure_latency_counts_runs_and_warmup():
    calls = []
    stats = measure_latency(lambda: calls.append(1), warmup=7, min_runs=100, max_attempts=1)
    assert stats.n == 100
    assert len(calls) == 107
    assert stats.median_ms >= 0 and stats.p90_ms >= stats.median_ms
    assert stats.attempts >= 1


def test_measure_latency_synchronizes_after_each_call():
    order = []
    measure_latency(lambda: order.append("run"), warmup=0, min_runs=5, max_attempts=1,
                    synchronize=lambda: order.append("sync"))
    assert order == ["run", "sync"] * 5


def test_budget_stops_early_with_floor():
    calls = []

    def slow():
        calls.append(1)
        import time

        time.sleep(0.002)

    stats = measure_latency(slow, warmup=0, min_runs=10_000, budget_s=0.05, min_runs_in_budget=5)
    assert 5 <= stats.n < 10_000


@pytest.mark.parametrize("kwargs", [{"warmup": -1}, {"min_runs": 0}, {"budget_s": 0}, {"max_attempts": 0}])
def test_measure_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        measure_interleaved({"a": lambda: None}, **kwargs)


# --------------------------------------------------------------------------- interleaving


def test_interleaving_alternates_configurations_in_rounds():
    order: list[str] = []
    configs = {name: (lambda n=name: order.append(n)) for name in "ABC"}
    stats = measure_interleaved(configs, warmup=0, min_runs=6, chunk=2, max_attempts=1)
    assert all(s.n == 6 for s in stats.values())
    # collapse consecutive repeats: rounds must go A, B, C, A, B, C, ...
    runs = [name for i, name in enumerate(order) if i == 0 or order[i - 1] != name]
    assert runs == list("ABC") * 3
    assert list(stats) == list("ABC")


def test_interleaved_configurations_share_round_numbers():
    stats = measure_interleaved({"A": lambda: None, "B": lambda: None}, warmup=0, min_runs=6, chunk=2, max_attempts=1)
    assert [r for r, _ in stats["A"].rounds] == [r for r, _ in stats["B"].rounds] == [0, 1, 2]
    assert all(ms >= 0 for _, ms in stats["A"].rounds)


def test_paired_ratio_follows_the_rounds_where_a_ratio_of_medians_drifts():
    from litedet.bench.harness import paired_ratio

    # the machine runs at full speed in rounds 0-1 and half speed in rounds 2-4; B takes 2.5x A throughout
    speed = [1.0, 1.0, 2.0, 2.0, 2.0]
    a = [(r, 10.0 * f) for r, f in enumerate(speed)]
    b = [(r, 25.0 * f) for r, f in enumerate(speed)]
    assert paired_ratio(b, a)["ratio"] == pytest.approx(2.5)
    assert paired_ratio(b, a)["rounds"] == 5
    # B measured mostly in the fast stretch (re-measured later): its median no longer says 2.5x
    assert np.median([25.0, 25.0, 50.0]) / np.median([10.0 * f for f in speed]) != pytest.approx(2.5)
    noisy = [(r, ms * (1.2 if r == 1 else 1.0)) for r, ms in b]
    spread = paired_ratio(noisy, a)
    assert spread["ratio"] == pytest.approx(2.5) and spread["low"] == pytest.approx(2.5)
    assert spread["high"] > 2.5
    assert paired_ratio(b, [(7, 10.0), (8, 10.0)]) is None  # measured apart: no shared rounds
    assert paired_ratio(b[:2], a) is None  # too few shared rounds


def _fake_loads(monkeypatch, values):
    """Each LoadMonitor the harness makes reports the next of ``values`` as other processes' load."""
    loads = iter(values)

    class FakeMonitor(LoadMonitor):
        def __init__(self):
            super().__init__()
            self.value = next(loads)

        @property
        def other_load(self):
            return self.value

    monkeypatch.setattr(harness, "LoadMonitor", FakeMonitor)


def test_re_measured_configurations_get_new_round_numbers(monkeypatch):
    _fake_loads(monkeypatch, [90.0, 1.0, 1.0])
    stats = measure_interleaved({"A": lambda: None, "B": lambda: None}, warmup=0, min_runs=4, chunk=2,
                                load_threshold=50, max_attempts=2)
    assert stats["A"].attempts == 2 and stats["B"].attempts == 1
    assert {r for r, _ in stats["A"].rounds}.isdisjoint(r for r, _ in stats["B"].rounds)


def test_interleaving_calls_before_hook_for_each_chunk():
    events: list[str] = []
    configs = {
        "A": Candidate(fn=lambda: events.append("a"), before=lambda: events.append("setA")),
        "B": Candidate(fn=lambda: events.append("b"), before=lambda: events.append("setB")),
    }
    measure_interleaved(configs, warmup=1, min_runs=4, chunk=2, max_attempts=1)
    # every run of A follows a setA with no B in between, and vice versa
    current = None
    for event in events:
        if event.startswith("set"):
            current = event[-1].lower()
        else:
            assert event == current


def test_disturbed_runs_are_repeated_and_flagged(monkeypatch):
    _fake_loads(monkeypatch, [90.0, 80.0, 95.0])
    stats = measure_interleaved({"a": lambda: None}, warmup=0, min_runs=3, load_threshold=50, max_attempts=3)["a"]
    assert stats.disturbed  # still above the threshold after every attempt
    assert stats.attempts == 3
    assert stats.other_load == 80.0  # the least disturbed attempt is kept


def test_quiet_runs_are_not_repeated(monkeypatch):
    class QuietMonitor(LoadMonitor):
        @property
        def other_load(self):
            return 1.0

    monkeypatch.setattr(harness, "LoadMonitor", QuietMonitor)
    calls = []
    stats = measure_interleaved({"a": lambda: calls.append(1)}, warmup=0, min_runs=4, load_threshold=50, max_attempts=3)["a"]
    assert not stats.disturbed and stats.attempts == 1 and len(calls) == 4


def test_load_monitor_reads_this_machine():
    monitor = LoadMonitor()
    with monitor:
        sum(i * i for i in range(200_000))
    load = monitor.other_load
    assert load is None or 0.0 <= load <= 100.0


def test_energy_meter_says_not_available_without_counters(monkeypatch):
    from litedet.bench import energy

    monkeypatch.setattr(energy, "rapl_zones", lambda root=energy.POWERCAP: [])
    meter = energy.open_energy_meter("cpu")
    meter.start()
    meter.stop()
    assert meter.source == "not available" and meter.per_image_mj(10) is None and meter.mean_watts is None


def test_rapl_meter_handles_counter_wrap(tmp_path):
    from litedet.bench.energy import RaplMeter, rapl_zones

    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    (zone / "max_energy_range_uj").write_text("1000000\n")
    (zone / "energy_uj").write_text("999000\n")
    assert rapl_zones(str(tmp_path)) == [zone]
    meter = RaplMeter([zone])
    meter.start()
    (zone / "energy_uj").write_text("1000\n")  # wrapped: 1000 uJ to the top + 1000 uJ after
    meter.stop()
    assert meter.joules == pytest.approx(0.002)
    assert meter.per_image_mj(2) == pytest.approx(1.0)


# --------------------------------------------------------------------------- machine


def test_machine_info_without_measuring():
    from litedet.bench.machine import machine_info

    info = machine_info(measure=False)
    assert info.logical_cpus >= 1 and info.cpu_model
    assert "numpy" in info.engines
    assert info.peak_gflops == {}
    assert json.loads(json.dumps(info.to_dict()))["cpu_model"] == info.cpu_model


def test_machine_info_and_report_say_which_post_processing_ran(monkeypatch):
    from litedet.bench.machine import machine_info
    from litedet.bench.report import markdown_report
    from litedet.ops import native

    assert machine_info(measure=False).postprocess == ("compiled" if native.available() else "numpy")
    monkeypatch.setenv("LITEDET_NATIVE", "0")
    info = machine_info(measure=False)
    assert info.postprocess == "numpy"
    assert "litedet post-processing: numpy." in markdown_report([], info.to_dict())


def test_peak_gflops_is_positive_and_rejects_bad_threads():
    from litedet.bench.machine import measure_peak_gflops

    gflops, method = measure_peak_gflops(1, n=256, repeats=2)
    assert gflops > 0 and method.startswith("best of ")
    with pytest.raises(ValueError):
        measure_peak_gflops(0)


def test_peak_kernels_span_several_libraries_and_peak_is_raised_to_the_observed():
    from litedet.bench.machine import MachineInfo, measure_peak_kernels, raise_peak_to_observed

    kernels = measure_peak_kernels(1, repeats=1, budget_s=0.05, sizes=(128, 256))
    assert len({label.split()[0] for label in kernels}) >= 2 and all(v > 0 for v in kernels.values())
    machine = MachineInfo("cpu", 2, 1, 1.0, "linux", "3", peak_gflops={1: 100.0, 2: 200.0})
    rows = [{"model": "a", "engine": "onnxruntime", "threads": 1, "achieved_gflops": 150.0, "peak_share": 1.5},
            {"model": "b", "engine": "ncnn", "threads": 1, "achieved_gflops": 75.0, "peak_share": 0.75},
            {"model": "a", "engine": "onnxruntime", "threads": 2, "achieved_gflops": 100.0, "peak_share": 0.5},
            {"model": "a", "engine": "onnxruntime", "threads": 1, "achieved_gflops": None, "peak_share": None}]
    notes = raise_peak_to_observed(machine, rows)
    assert machine.peak_gflops == {1: 150.0, 2: 200.0} and len(notes) == 1 and "150.0" in notes[0]
    assert [r["peak_share"] for r in rows] == [1.0, 0.5, 0.5, None]


def test_a_backbone_name_is_refused_before_any_work(tmp_path):
    from litedet.bench.run import benchmark

    with pytest.raises(ValueError, match="'shufflenetv2_x1_0' is a backbone, and litedet bench times detectors"):
        benchmark(models="v5lite-e,shufflenetv2_x1_0", engines="onnxruntime", threads=1, runs=1, out_dir=tmp_path,
                  measure_peak=False)
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------- peers


def test_unknown_peer_is_an_error():
    from litedet.bench.peers import get_peer

    with pytest.raises(ValueError, match="unknown peer"):
        get_peer("yolov99")


def test_absent_peers_are_skipped_with_a_note(monkeypatch, tmp_path):
    from litedet.bench import peers

    monkeypatch.setenv("LITEDET_SHARED", str(tmp_path))  # no published weights here
    real_find_spec = peers.importlib.util.find_spec
    monkeypatch.setattr(peers.importlib.util, "find_spec",
                        lambda name, *a: None if name == "ultralytics" else real_find_spec(name, *a))
    found, notes = peers.resolve_peers(["yolov8n", "v5lite-ncnn", "fastestdet", "ssdlite"])
    assert [p.name for p in found] == ["ssdlite"]
    assert len(notes) == 3
    assert any("ultralytics" in n for n in notes)
    assert any("v5lite-e.ncnn.param" in n for n in notes)


def test_ncnn_io_names(tmp_path):
    from litedet.bench.peers import ncnn_io_names

    param = tmp_path / "m.param"
    param.write_text(
        "7767517\n4 5\nInput in0 0 1 images\nConvolution c 1 1 images a 0=8\nSplit s 1 2 a a0 a1\n"
        "Sigmoid o 1 1 a0 out1\n"
    )
    assert ncnn_io_names(param) == ("images", ["a1", "out1"])


def test_published_v5lite_runs_and_decodes(shared):
    from litedet.bench.peers import V5LiteNcnnPeer

    import cv2

    peer = V5LiteNcnnPeer()
    if peer.missing():
        pytest.skip(peer.missing())
    variant = next(v for v in peer.variants([320]) if v.variant == "v5lite-e")
    assert variant.imgsz == 320 and variant.engines == ("ncnn",)
    run = peer.open(variant, "ncnn", 1, shared)
    image_path = sorted((shared / "data/coco256/images/val2017").glob("*.jpg"))[0]
    image = cv2.imread(str(image_path))
    tensor, meta = peer.preprocess(image, variant)
    assert tensor.shape == (1, 3, 320, 320) and tensor.dtype == np.float32
    outputs = run(tensor)
    assert [o.shape for o in outputs] == [(1, 3, 1600, 85), (1, 3, 400, 85), (1, 3, 100, 85)]
    dets = peer.postprocess(outputs, meta, variant, conf=0.25, iou=0.45)
    assert len(dets) > 0  # a trained COCO model finds something in a COCO image
    assert (dets.boxes[:, 2] <= image.shape[1] + 1e-3).all() and (dets.boxes[:, 3] <= image.shape[0] + 1e-3).all()
    assert ((dets.classes >= 0) & (dets.classes < 80)).all()


# --------------------------------------------------------------------------- report


def _row(**over):
    row = {"model": "m", "variant": "m", "kind": "litedet", "engine": "onnxruntime", "threads": 1, "imgsz": 64,
           "batch": 1, "mode": "network", "median_ms": 2.0, "p90_ms": 2.5, "gflops": 0.1, "params": 1000,
           "other_load": 3.0, "disturbed": False}
    row.update(over)
    return row


def test_report_writes_markdown_json_and_plots(tmp_path):
    from litedet.bench.report import write_report

    rows = [_row(), _row(engine="torch", median_ms=5.0, p90_ms=6.0), _row(model="peer", kind="peer", median_ms=1.0)]
    results = [{"model": "m", "map50_95": 0.3, "map50": 0.5}, {"model": "peer", "map50_95": 0.2}]
    paths = write_report(rows, tmp_path, machine={"cpu_model": "cpu", "peak_gflops": {1: 100.0}}, map_results=results)
    text = paths["markdown"].read_text()
    assert "| m @64 |" in text and "onnxruntime" in text
    payload = json.loads(paths["json"].read_text())
    assert len(payload["rows"]) == 3
    assert paths["latency_png"].read_bytes()[:4] == b"\x89PNG"
    assert paths["pareto_network_png"].read_bytes()[:4] == b"\x89PNG"


def test_terminal_summary_is_short_and_points_to_the_report(tmp_path):
    from litedet.bench.report import markdown_report, terminal_summary, write_report

    rows = [_row(threads=t, engine=e, median_ms=m, disturbed=d) for t in (1, 2)
            for e, m, d in (("onnxruntime", 2.0, False), ("torch", 5.0, t == 2))]
    rows += [_row(threads=1, batch=4, median_ms=7.0)]
    paths = write_report(rows, tmp_path)
    text = terminal_summary(rows, ["a note"], paths)
    lines = text.splitlines()
    assert len(lines) < len(markdown_report(rows).splitlines()) and len(lines) == 7
    assert lines[1].split() == ["model", "engine", "1", "thr", "2", "thr"]
    assert lines[3].split() == ["m", "@64", "torch", "5.00", "5.00!"]
    assert "1 figure(s) marked ! were measured while other processes" in text
    assert "1 note(s)" in text and f"full tables: {paths['markdown']}" in text and "latency.png" in text


def test_report_sets_each_litedet_model_beside_the_peers_measured_alike(tmp_path):
    from litedet.bench.report import markdown_report, peer_pairs, terminal_summary

    fast_slow = [1.0, 2.0, 1.0, 2.0]
    ours = [[r, 4.0 * f] for r, f in enumerate(fast_slow)]
    theirs = [[r, 8.0 * f] for r, f in enumerate(fast_slow)]
    rows = [_row(model="v5lite-e", variant="v5lite-e", imgsz=320, threads=2, mode="end-to-end", median_ms=6.0,
                 gflops=0.87, rounds=ours),
            _row(model="yolov8n", variant="yolov8n", kind="peer", imgsz=320, threads=2, mode="end-to-end",
                 median_ms=9.0, gflops=2.19, rounds=theirs),
            _row(model="yolov8n", variant="yolov8n", kind="peer", imgsz=416, threads=2, mode="end-to-end",
                 median_ms=15.0, gflops=3.7, rounds=theirs),  # another size: not a pair
            _row(model="yolov8n", variant="yolov8n", kind="peer", imgsz=320, threads=2, engine="openvino",
                 mode="end-to-end", median_ms=7.0, gflops=2.19)]  # another engine: not a pair
    pairs = peer_pairs(rows)
    assert len(pairs) == 1
    pair = pairs[0]
    assert pair["ratio"] == pytest.approx(2.0) and pair["paired"] and pair["rounds"] == 4
    assert pair["flops_ratio"] == pytest.approx(2.19 / 0.87)
    report = markdown_report(rows)
    assert "## Side by side with the peers" in report
    assert "| v5lite-e @320 | yolov8n @320 | onnxruntime | 2 | end-to-end | 6.00 | 9.00 | 2.00x | 2.00–2.00 (4 rounds) | 2.52x |" in report
    text = terminal_summary(rows)
    assert "peer time / litedet time, end-to-end, batch 1 (median of per-round ratios):" in text
    line = next(l for l in text.splitlines() if l.startswith("yolov8n @320 / v5lite-e @320"))
    assert line.split()[-2:] == ["2.52x", "2.00x"]
    # without shared rounds (measured apart) the ratio falls back to the medians and says so
    for row in rows:
        row.pop("rounds", None)
    pair = peer_pairs(rows)[0]
    assert pair["ratio"] == pytest.approx(1.5) and not pair["paired"]
    assert "(ratio of the medians: too few shared rounds):" in terminal_summary(rows)
    assert "medians (no shared rounds)" in markdown_report(rows)
    assert peer_pairs([_row()]) == [] and "Side by side" not in markdown_report([_row()])


def test_a_machine_whose_speed_swings_during_the_run_gets_a_note():
    from litedet.bench.report import speed_swing_notes, terminal_summary

    steady = [[r, 10.0 + 0.1 * r] for r in range(5)]
    swinging = [[0, 12.5], [1, 12.7], [2, 22.4], [3, 22.6], [4, 12.6]]
    rows = [_row(rounds=swinging), _row(engine="openvino", rounds=swinging), _row(engine="ncnn", rounds=steady)]
    notes = speed_swing_notes(rows)
    assert len(notes) == 1 and "2 of 3 configurations" in notes[0] and "12.50-22.60 ms" in notes[0]
    assert "note: the machine's speed changed during the run" in terminal_summary(rows, notes)
    assert speed_swing_notes([_row(rounds=swinging), _row(engine="openvino", rounds=steady),
                              _row(engine="ncnn", rounds=steady)]) == []  # one configuration: its own noise
    assert speed_swing_notes([_row(rounds=swinging, disturbed=True)]) == []  # other processes explain it
    assert speed_swing_notes([_row(rounds=swinging[:3])]) == []  # too few rounds to say
    assert speed_swing_notes([_row()]) == []


def test_disturbed_outlier_does_not_squash_the_latency_plot(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from litedet.bench import report

    assert report.plot_limit([10.0, 12.0, 446.0], [False, False, True]) == pytest.approx(15.0)
    assert report.plot_limit([10.0, 12.0, 446.0], [False, False, False]) is None  # real figures stay
    assert report.plot_limit([10.0, 12.0, 13.0], [False, False, True]) is None  # nothing to clip
    limits = []
    original = plt.Axes.set_ylim
    rows = [_row(median_ms=10.0), _row(engine="torch", median_ms=12.0),
            _row(engine="openvino", median_ms=446.0, disturbed=True)]
    try:
        plt.Axes.set_ylim = lambda self, *a, **k: (limits.append(a), original(self, *a, **k))[1]
        report.plot_latency(rows, tmp_path / "latency.png")
    finally:
        plt.Axes.set_ylim = original
    ours = [a for a in limits if len(a) == 2 and a[0] == 0]  # matplotlib's own calls pass keywords
    assert ours and ours[-1][1] == pytest.approx(15.0 * 1.08)


def test_report_rejects_rows_without_required_keys(tmp_path):
    from litedet.bench.report import write_report

    row = _row()
    del row["p90_ms"]
    with pytest.raises(ValueError, match="p90_ms"):
        write_report([row], tmp_path)


def test_map_results_file_is_checked(tmp_path):
    from litedet.bench.report import load_map_results

    good = tmp_path / "good.json"
    good.write_text(json.dumps([{"model": "v5lite-e", "map50_95": 0.27, "map50": 0.44}]))
    assert load_map_results(good)[0]["model"] == "v5lite-e"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"model": "x", "map50_95": 27.5}]))
    with pytest.raises(ValueError, match="fraction"):
        load_map_results(bad)
    with pytest.raises(FileNotFoundError):
        load_map_results(tmp_path / "missing.json")


def test_pareto_front():
    from litedet.bench.report import pareto_front

    points = [(10, 0.3), (5, 0.2), (20, 0.25), (7, 0.2), (30, 0.4)]
    assert pareto_front(points) == [1, 0, 4]


def test_attach_accuracy_matches_engine_and_size():
    from litedet.bench.report import attach_accuracy

    rows = [_row(engine="torch"), _row(engine="ncnn"), _row(imgsz=320)]
    joined = attach_accuracy(rows, [{"model": "m", "engine": "ncnn", "imgsz": 64, "map50_95": 0.1}])
    assert len(joined) == 1 and joined[0]["engine"] == "ncnn"
    assert not math.isnan(joined[0]["map50_95"])
    peer = _row(model="v5lite-ncnn", variant="v5lite-e", kind="peer")
    joined = attach_accuracy([_row(model="v5lite-e", variant="v5lite-e"), peer],
                             [{"model": "v5lite-e", "kind": "peer", "map50_95": 0.275}])
    assert [r["model"] for r in joined] == ["v5lite-ncnn"]


# --------------------------------------------------------------------------- runs


def _required_row_types(row):
    from litedet.bench.report import REQUIRED_KEYS

    for key in REQUIRED_KEYS:
        assert key in row, key
    assert isinstance(row["model"], str) and isinstance(row["engine"], str)
    assert isinstance(row["threads"], int) and isinstance(row["imgsz"], int) and isinstance(row["batch"], int)
    assert row["median_ms"] > 0 and row["p90_ms"] >= row["median_ms"]
    assert row["gflops"] is None or row["gflops"] > 0
    assert row["params"] is None or row["params"] > 0
    for key in ("other_load", "disturbed", "energy_mj_per_image", "energy_source", "mode", "n"):
        assert key in row


def test_published_peers_rows_schema(shared, tmp_path):
    """Peers only (no torch export needed): network + end-to-end rows, report files, JSON rows."""
    import cv2

    from litedet.bench.run import benchmark, load_images

    pytest.importorskip("onnxruntime")
    pytest.importorskip("ncnn")
    images = load_images(2)
    assert all(isinstance(im, np.ndarray) and im.ndim == 3 for im in images)
    result = benchmark(models=[], peers="fastestdet,v5lite-ncnn", engines="onnxruntime,ncnn", threads="1",
                       imgsz="320", runs=3, warmup=1, end_to_end=True, images=images, out_dir=tmp_path,
                       measure_peak=False, progress=False, cache_dir=tmp_path / "cache")
    rows = result.rows
    keys = {(r["model"], r.get("variant"), r["engine"], r["imgsz"], r["mode"]) for r in rows}
    assert keys == {
        ("fastestdet", "fastestdet", "onnxruntime", 352, "network"),
        ("v5lite-ncnn", "v5lite-e", "ncnn", 320, "network"),
        ("v5lite-ncnn", "v5lite-s", "ncnn", 416, "network"),
        ("fastestdet", "fastestdet", "onnxruntime", 352, "end-to-end"),
        ("v5lite-ncnn", "v5lite-e", "ncnn", 320, "end-to-end"),
        ("v5lite-ncnn", "v5lite-s", "ncnn", 416, "end-to-end"),
    }
    for row in rows:
        _required_row_types(row)
        assert row["n"] == 3
    assert json.loads(json.dumps(rows))  # plain JSON types only
    payload = json.loads((tmp_path / "results.json").read_text())
    assert len(payload["rows"]) == 6 and "energy" in " ".join(payload["notes"])
    assert (tmp_path / "latency.png").is_file()
    del cv2


def test_benchmark_rejects_bad_arguments(tmp_path):
    from litedet.bench.run import benchmark

    with pytest.raises(ValueError, match="engine"):
        benchmark(models="v5lite-e", engines="tensorrt", out_dir=tmp_path, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="nothing to benchmark"):
        benchmark(models="", peers="", out_dir=tmp_path)
    with pytest.raises(ValueError, match="threads"):
        benchmark(models="v5lite-e", threads="0", out_dir=tmp_path)


def _tiny_benchmark(tmp_path, images: int = 2, **options):
    """v5lite-e at 64 px on torch and ONNX Runtime, end to end on random images, 3 runs each."""
    pytest.importorskip("onnxruntime")
    import litedet.bench.profile  # noqa: F401  (litedet's own code: an import error fails, never skips)
    import litedet.export.api  # noqa: F401
    from litedet.bench.run import benchmark

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (90, 120, 3), dtype=np.uint8) for _ in range(images)]
    return benchmark(models="v5lite-e", engines="torch,onnxruntime", imgsz="64", runs=3, warmup=1, end_to_end=True,
                     images=frames, out_dir=tmp_path, measure_peak=False, progress=False, cache_dir=tmp_path / "cache",
                     **options)


def test_tiny_litedet_model_end_to_end(tmp_path):
    """A litedet model through torch and ONNX Runtime at 64 px, network (batch 1 and 2) and
    end-to-end, 3 runs each: the run completes and every row is well formed."""
    result = _tiny_benchmark(tmp_path, threads="1", batch="1,2")
    combos = {(r["engine"], r["batch"], r["mode"]) for r in result.rows}
    assert ("torch", 1, "network") in combos and ("onnxruntime", 1, "end-to-end") in combos
    assert ("torch", 2, "network") in combos
    for row in result.rows:
        _required_row_types(row)
        assert row["model"] == "v5lite-e" and row["kind"] == "litedet"
        assert row["gflops"] > 0 and row["params"] > 0
    network = [r for r in result.rows if r["mode"] == "network" and r["batch"] == 2]
    assert all(r["images_per_s"] == pytest.approx(2e3 / r["median_ms"]) for r in network)
    # end-to-end rows say where their time went, measured inside the calls; network rows do not
    for row in result.rows:
        if row["mode"] == "end-to-end":
            assert 0 < row["pre_ms"] and 0 < row["post_ms"] and row["pre_ms"] + row["post_ms"] < row["median_ms"]
        else:
            assert "pre_ms" not in row and "post_ms" not in row
    assert "## Pre- and post-processing of litedet models" in (tmp_path / "report.md").read_text()
    # a second run reuses the cached exports
    cache = list((tmp_path / "cache").glob("v5lite-e_64_random/onnxruntime_dynamic_uint8/.done"))
    assert cache


def test_export_cache_is_reused_only_when_the_current_exporter_wrote_it(tmp_path):
    """The bench reuses an export only if its marker names the current exporter revision: a file
    an older exporter wrote (an old one-line marker, another revision) is exported again."""
    from types import SimpleNamespace

    from litedet.bench.run import _cached_export
    from litedet.export.formats import EXPORT_REVISION

    calls = []

    def fake_export(checkpoint, fmt, out_dir, **options):
        calls.append(fmt)
        path = Path(out_dir) / "model_uint8.onnx"
        path.write_text("graph")
        return SimpleNamespace(path=path)

    folder = tmp_path / "onnxruntime_uint8"
    first = _cached_export(fake_export, tmp_path / "m.safetensors", "onnxruntime", 64, folder, False)
    assert _cached_export(fake_export, tmp_path / "m.safetensors", "onnxruntime", 64, folder, False) == first
    assert len(calls) == 1 and (folder / ".done").read_text().splitlines() == [f"export revision {EXPORT_REVISION}", str(first)]
    for stale in (f"{first}\n", f"export revision {EXPORT_REVISION - 1}\n{first}\n"):
        (folder / ".done").write_text(stale)
        _cached_export(fake_export, tmp_path / "m.safetensors", "onnxruntime", 64, folder, False)
    assert len(calls) == 3


def test_stream_gang_runs_its_copies_at_the_same_time_and_passes_errors_on():
    """Each copy's call waits for the other's at a barrier: only concurrent calls get through."""
    import threading

    from litedet.bench.run import _StreamGang

    gang = _StreamGang(3)
    try:
        meeting = threading.Barrier(3, timeout=10)
        seen = []

        def copy(index):
            def call():
                meeting.wait()
                seen.append(index)
                return index
            return call

        for _ in range(2):  # the resident threads serve call after call
            assert gang.run([copy(0), copy(1), copy(2)]) == 0
        assert sorted(seen) == [0, 0, 1, 1, 2, 2]

        def boom():
            raise RuntimeError("copy 2 failed")

        with pytest.raises(RuntimeError, match="copy 2 failed"):
            gang.run([lambda: 1, lambda: 2, boom])
        assert gang.run([lambda: "after", lambda: None, lambda: None]) == "after"  # still usable
        with pytest.raises(ValueError, match="2 callables for 3 streams"):
            gang.run([lambda: 1, lambda: 2])
    finally:
        gang.close()
    assert not any(thread.is_alive() for thread in gang._threads)


def test_streams_add_images_per_second_rows_for_copies_side_by_side(tmp_path):
    """--threads 1,2 --streams 1,2 on ONNX Runtime: the 2-thread budget gets a 2-stream row (two
    copies of one thread; network and end to end) whose images/s counts both copies; 1 thread
    cannot hold two streams and torch runs no copies (notes say why); the report and the terminal
    summary show images/s side by side."""
    from litedet.bench.report import terminal_summary
    from litedet.bench.run import benchmark

    result = _tiny_benchmark(tmp_path, images=3, threads="1,2", streams="1,2")
    combos = {(r["engine"], r["mode"], r["threads"], r["streams"]) for r in result.rows}
    assert combos == {(e, m, t, 1) for e in ("torch", "onnxruntime") for m in ("network", "end-to-end") for t in (1, 2)} | {
        ("onnxruntime", "network", 2, 2), ("onnxruntime", "end-to-end", 2, 2)}
    for row in result.rows:
        _required_row_types(row)
        assert row["images_per_s"] == pytest.approx(row["streams"] * 1e3 / row["median_ms"])
        if row["streams"] == 2:
            assert "pre_ms" not in row  # per-stage figures belong to one copy
    assert any("torch: no streams rows" in note for note in result.notes)
    assert any("2 streams need at least 2 threads" in note for note in result.notes)
    report = (tmp_path / "report.md").read_text()
    assert "## network, 2 threads in 2 streams, batch 1" in report and "## Throughput" in report
    assert "| network 2 thr | network 2 thr 2 streams |" in report
    summary = terminal_summary(result.rows, result.notes)
    assert "images/s, batch 1" in summary and "2thr 2str" in summary and "e2e 2thr 2str" in summary

    only = benchmark(models="v5lite-e", engines="onnxruntime", threads="2", imgsz="64", streams="2", runs=2, warmup=1,
                     out_dir=None, measure_peak=False, progress=False, cache_dir=tmp_path / "cache")
    assert {(r["threads"], r["streams"]) for r in only.rows} == {(2, 2)}
    with pytest.raises(ValueError, match="streams must be >= 1"):
        benchmark(models="v5lite-e", engines="onnxruntime", streams="0", out_dir=None, cache_dir=tmp_path / "cache")


def test_stage_and_throughput_tables_keep_single_copies_and_streams_apart():
    from litedet.bench.report import stage_table, throughput_table

    base = {"model": "m", "variant": "m", "engine": "onnxruntime", "threads": 1, "imgsz": 64, "batch": 1,
            "precision": "fp32", "disturbed": False}
    rows = [dict(base, mode="network", streams=1, median_ms=4.0, images_per_s=250.0),
            dict(base, mode="network", streams=2, median_ms=5.0, images_per_s=400.0),
            dict(base, mode="end-to-end", streams=1, median_ms=5.0, images_per_s=200.0, pre_ms=0.3, post_ms=0.2)]
    assert "| 4.00 |" in stage_table(rows)  # the single copy's network median, not the 2-stream call
    table = throughput_table(rows)
    assert "network 1 thr | network 1 thr 2 streams" in table and "250.0 | 400.0" in table
    assert throughput_table([r for r in rows if r["streams"] == 1]) == ""


# --------------------------------------------------------------------------- CLI


def test_cli_parses_both_modes():
    from litedet.cli import build_parser

    parser = build_parser("bench")
    args = parser.parse_args(["bench", "guidelines", "--quick", "--out", "x"])
    assert args.mode == "guidelines" and args.quick and args.out == "x"
    args = parser.parse_args(["bench", "--models", "v5lite-e,v5lite-s", "--threads", "1,2", "--end-to-end", "--json"])
    assert args.mode == "run" and args.end_to_end and args.json and args.models == "v5lite-e,v5lite-s"


def test_cli_reports_bad_engine_as_one_line(capsys):
    from litedet.cli import main

    assert main(["bench", "--models", "v5lite-e", "--engines", "tensorrt", "--out", "/tmp/never"]) == 2
    err = capsys.readouterr().err
    assert "tensorrt" in err and "Traceback" not in err


# --------------------------------------------------------------------------- guidelines


def test_guideline_experiments_follow_the_paper():
    from litedet.bench.guidelines import guideline_experiments

    experiments = guideline_experiments((1, 2))
    keys = [e.key for e in experiments]
    assert keys == ["G1", "G1", "G2", "G2", "G3", "G3", "G4", "G4"]
    g1 = experiments[0]
    assert [s.label for s in g1.settings] == ["1:1", "1:2", "1:6", "1:12"]
    assert [s.channels for s in g1.settings] == ["(128,128)", "(90,180)", "(52,312)", "(36,432)"]
    assert [s.channels for s in experiments[3].settings] == ["c=256", "c=360", "c=512", "c=720"]
    for experiment in experiments:
        assert experiment.expected_fastest in [s.label for s in experiment.settings]
        for setting in experiment.settings:
            blocks = setting.build()
            assert len(blocks) == 10  # §2: ten stacked blocks
    with pytest.raises(ValueError):
        guideline_experiments((3,))


def test_guideline_blocks_keep_shapes():
    import torch

    from litedet.bench.guidelines import guideline_experiments

    for experiment in guideline_experiments((1,)):
        for setting in experiment.settings:
            x = torch.zeros(1, setting.in_channels, 8, 8)
            assert setting.build()(x).shape == x.shape  # blocks stack: same channels in and out


def test_guideline_flops_are_equal_within_each_experiment():
    from litedet.bench.guidelines import check_equal_flops, guideline_experiments

    for experiment in guideline_experiments((1,)):
        flops = check_equal_flops(experiment)
        assert min(flops) > 0
        assert max(flops) <= min(flops) * 1.06


def test_focus_stems_params_and_flops():
    from litedet.bench.guidelines import focus_stems

    stems = focus_stems(32)
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in stems.items()}
    assert params["Focus + 3x3 conv"] == params["6x6 conv stride 2"]  # 12*9 == 3*36 weights per filter
    assert params["3x3 conv stride 2"] < params["Focus + 3x3 conv"]
    import torch

    x = torch.zeros(1, 3, 64, 64)
    assert {tuple(m.eval()(x).shape) for m in stems.values()} == {(1, 32, 32, 32)}


def test_dense_block_matches_param_budget():
    from litedet.bench.guidelines import DenseBlock, equal_params_dense_block

    block = equal_params_dense_block(900_000, in_channels=128, layers=5)
    params = sum(p.numel() for p in block.parameters())
    assert abs(params - 900_000) / 900_000 < 0.02
    assert isinstance(block, DenseBlock) and block.out_channels == 128 + 5 * block.layers[0][-1].out_channels


def test_guideline_verdict_from_synthetic_timings():
    from litedet.bench.guidelines import GuidelinesReport, _result, guideline_experiments, guidelines_markdown

    experiment = guideline_experiments((1,))[1]  # G2: g=1, 2, 4, 8
    profiles = {s.label: {"params": 1, "gflops": 1.0, "mac_m": 2.0} for s in experiment.settings}
    in_order = {s.label: summarize([0.010 * (i + 1)] * 3) for i, s in enumerate(experiment.settings)}
    result = _result(experiment, in_order, profiles, 1, "cpu")
    assert result.agrees and result.monotone and result.fastest == "g=1"
    assert [round(r.relative, 2) for r in result.rows] == [1.0, 2.0, 3.0, 4.0]
    swapped = dict(in_order, **{"g=2": summarize([0.005] * 3)})
    result = _result(experiment, swapped, profiles, 1, "cpu")
    assert not result.agrees and result.fastest == "g=2" and result.expected_relative == pytest.approx(2.0)
    assert result.monotone is False
    text = guidelines_markdown(GuidelinesReport("cpu", 1, [result], [], [], {}))
    assert "DISAGREES" in text and "| g=2 | c=180 |" in text


def test_stage_table_puts_pre_and_post_beside_the_network_median_of_the_same_configuration():
    from litedet.bench.report import stage_table

    base = {"model": "v5lite-e", "variant": "v5lite-e", "engine": "onnxruntime", "threads": 2, "imgsz": 320,
            "batch": 1, "precision": "fp32"}
    rows = [
        {**base, "mode": "network", "median_ms": 8.0},
        {**base, "mode": "end-to-end", "median_ms": 9.0, "pre_ms": 0.3, "post_ms": 0.5},
        {**base, "threads": 1, "mode": "network", "median_ms": 12.0},
        {**base, "engine": "ncnn", "mode": "end-to-end", "median_ms": 20.0, "pre_ms": 0.4, "post_ms": 0.6},
        {**base, "model": "yolov8n", "variant": "yolov8n", "mode": "end-to-end", "median_ms": 9.0},  # a peer: no stages
    ]
    table = stage_table(rows).splitlines()
    assert len(table) == 4
    assert table[2] == "| v5lite-e @320 | onnxruntime | 2 | 0.30 | 0.50 | 8.00 | 10.0 % | 9.00 | 12.5 % (medians) |"
    assert table[3] == "| v5lite-e @320 | ncnn | 2 | 0.40 | 0.60 | — | — | 20.00 | — |"
    assert stage_table([rows[0], rows[4]]) == ""
    # with rounds, the gap is the median of the rounds' own ratios: a slow stretch (rounds 2-3)
    # that raises the end-to-end median more than the network's does not enter it
    rows[0]["rounds"] = [[0, 4.0], [1, 4.0], [2, 8.0], [3, 8.0], [4, 4.0]]
    rows[1]["rounds"] = [[0, 4.4], [1, 4.4], [2, 8.8], [3, 8.8], [4, 4.4]]
    assert stage_table(rows).splitlines()[2].endswith("| 10.0 % |")


def test_end_to_end_is_timed_in_the_same_rounds_as_the_network(tmp_path, monkeypatch):
    """End to end minus network is what pre- and post-processing add: both figures of a model
    come from one interleaved group, so drift of the machine between groups cannot enter it."""
    pytest.importorskip("onnxruntime")
    import litedet.bench.run as bench_run

    groups = []
    real = bench_run.measure_interleaved

    def spy(candidates, **kwargs):
        groups.append(sorted(candidates))
        return real(candidates, **kwargs)

    monkeypatch.setattr(bench_run, "measure_interleaved", spy)
    images = [np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)]
    bench_run.benchmark(models="v5lite-e", engines="onnxruntime", threads="1", imgsz="64", batch="1,2", runs=2,
                        warmup=1, end_to_end=True, images=images, out_dir=tmp_path, measure_peak=False,
                        progress=False, cache_dir=tmp_path / "cache")
    assert len(groups) == 2
    batch1 = [g for g in groups if any(k.endswith("|end-to-end") for k in g)]
    assert len(batch1) == 1 and len(batch1[0]) == 2  # the network and the end-to-end candidate, together
    assert not any(k.endswith("|end-to-end") for g in groups if g is not batch1[0] for k in g)


def test_prepost_script_times_float_and_uint8_exports_side_by_side(tmp_path, capsys):
    """scripts/prepost_side_by_side.py: one table row per engine file, its input type named."""
    import importlib.util

    import cv2
    import torch

    from litedet.export.api import export_model
    from litedet.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("v5lite-e", input_size=64, num_classes=2, names=["a", "b"]).eval()
    plain = export_model(model, "onnx", tmp_path, imgsz=64).path
    packed = export_model(model, "onnx", tmp_path, imgsz=64, uint8_input=True).path
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(2):
        cv2.imwrite(str(folder / f"{index}.png"), np.random.default_rng(index).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    spec = importlib.util.spec_from_file_location("prepost", Path(__file__).parents[1] / "scripts" / "prepost_side_by_side.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([str(plain), str(packed), "--threads", "1", "--rounds", "1", "--detections", "2", "--network", "2",
                        "--images", str(folder)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {tmp_path}")]
    assert [row.split(" | ")[1] for row in rows] == ["float32", "uint8"]


def test_op_profile_script_splits_kernel_time_and_compares_with_the_first_model(tmp_path, capsys):
    """scripts/ort_op_profile.py: per-model conv / data-movement split and the ratios to the first."""
    import importlib.util
    import json

    import torch

    from litedet.export.api import export_model
    from litedet.models.registry import create_model

    torch.manual_seed(0)
    small = export_model(create_model("v5lite-e", input_size=64).eval(), "onnx", tmp_path / "e", imgsz=64).path
    large = export_model(create_model("v5lite-s", input_size=64).eval(), "onnx", tmp_path / "s", imgsz=64).path
    spec = importlib.util.spec_from_file_location("opprofile", Path(__file__).parents[1] / "scripts" / "ort_op_profile.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "profile.json"
    assert script.main([f"e={small}", f"s={large}", "--threads", "1", "--rounds", "1", "--runs", "3",
                        "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "e: " in text and "s / e: " in text and "convs only" in text
    numbers = json.loads(out.read_text())["1"]
    for name in ("e", "s"):
        row = numbers[name]
        assert row["conv_ms"] > 0 and row["total_ms"] == pytest.approx(row["conv_ms"] + row["movement_ms"] + row["other_ms"])
        assert row["per_op_ms"]["Conv"] == pytest.approx(row["conv_ms"])
    assert numbers["s"]["vs_reference"]["all"] == pytest.approx(numbers["s"]["total_ms"] / numbers["e"]["total_ms"])


def test_gflops_of_engine_files_equal_the_torch_count(tmp_path):
    """Peers published only as ONNX or ncnn files get FLOPs from the file: the same count as
    litedet's torch profile of the same network."""
    from conftest import require_shared

    from litedet.bench.peers import ncnn_gflops
    from litedet.bench.profile import profile_model
    from litedet.compress.report import count_file_gflops
    from litedet.export.api import export_model
    from litedet.models.registry import create_model

    model = create_model("v5lite-e", input_size=64).eval()
    expected = 2.0 * profile_model(model, (64, 64), 1).madds / 1e9
    onnx_file = export_model(model, "onnx", tmp_path, imgsz=64).path
    assert count_file_gflops(onnx_file) == pytest.approx(expected, rel=1e-6)
    assert count_file_gflops(tmp_path / "model.json") is None
    pytest.importorskip("ncnn")
    param = require_shared("weights", "yolov5-lite", "v5lite-e.ncnn.param")
    published = 2.0 * profile_model(create_model("v5lite-e").eval(), (320, 320), 1).madds / 1e9
    assert ncnn_gflops(param, 320) == pytest.approx(published, rel=1e-6)


def test_weights_for_a_model_not_benchmarked_are_refused():
    from litedet.bench.run import benchmark

    with pytest.raises(ValueError, match=r"--weights for \['v5lite-s'\] but --models has no such model \(v5lite-e\)"):
        benchmark(models=["v5lite-e"], engines=["onnxruntime"], threads=[1], imgsz=[64], runs=1,
                  weights={"v5lite-s": "s.safetensors"})


def test_ctrl_c_while_timing_keeps_the_rounds_run(tmp_path, monkeypatch):
    """A KeyboardInterrupt inside the interleaved rounds: the harness hands over the stats of what
    it timed, and the bench writes its report from them and says it was interrupted."""
    from litedet.bench import run as run_module
    from litedet.bench.harness import MeasurementInterrupted, measure_interleaved

    calls = {"n": 0}

    def stops_at_the_fifth_call() -> None:
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt

    with pytest.raises(MeasurementInterrupted) as caught:
        measure_interleaved({"A": lambda: None, "B": stops_at_the_fifth_call}, warmup=0, min_runs=20, chunk=2,
                            max_attempts=1)
    partial = caught.value.partial
    assert set(partial) == {"A", "B"} and partial["A"].n >= 2 and partial["B"].n >= 1
    assert isinstance(caught.value, KeyboardInterrupt)  # callers that do not look for it stop as before

    real = run_module.measure_interleaved

    def interrupted_after_a_little(candidates, **kwargs):
        first = next(iter(candidates))
        stats = real({first: candidates[first]}, **{**kwargs, "min_runs": 2, "warmup": 0})
        raise MeasurementInterrupted(stats)

    monkeypatch.setattr(run_module, "measure_interleaved", interrupted_after_a_little)
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    result = run_module.benchmark(models="v5lite-e", engines="onnxruntime", threads="1", imgsz="64", runs=5, warmup=1,
                                  out_dir=tmp_path, measure_peak=False, progress=False, cache_dir=tmp_path / "cache")
    assert result.interrupted and len(result.rows) == 1 and result.rows[0]["median_ms"] > 0
    assert any(note.startswith("interrupted (Ctrl-C) while timing batch 1") for note in result.notes)
    assert result.paths and all(Path(path).is_file() for path in result.paths.values())
