"""litedet.distributed: frame-parallel streaming and split inference.

The in-process tests need no Ray. The Ray tests share one two-node cluster on this machine
(``ray.cluster_utils.Cluster``: a head with custom resource ``device_a`` and a node with
``device_b``), a random-weight v5lite-e at 64 px and a 20-frame generated video; the cluster is
shut down at the end of the module.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from litedet.distributed.split import (  # noqa: E402
    DeviceProfile,
    SplitGraph,
    load_profile,
    parse_bandwidth,
    parse_latency,
    plan_split,
    profile_device,
)
from litedet.distributed.stream import run_stream  # noqa: E402

FRAMES = 20
SIZE = 64


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random-weight v5lite-e checkpoint at 64 px and a 20-frame 64x64 video with a moving box."""
    import litedet.models.zoo  # noqa: F401
    from litedet.models.checkpoint import save_checkpoint_weights
    from litedet.models.registry import create_model

    root = tmp_path_factory.mktemp("distributed")
    torch.manual_seed(0)
    model = create_model("v5lite-e", input_size=SIZE).eval()
    weights = save_checkpoint_weights(model, root / "e64.safetensors")
    video = root / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (SIZE, SIZE))
    assert writer.isOpened()
    for i in range(FRAMES):
        image = np.full((SIZE, SIZE, 3), 40, np.uint8)
        cv2.rectangle(image, (4 + i, 10), (28 + i, 50), (200, 100, 50), -1)
        writer.write(image)
    writer.release()
    return {"weights": weights, "video": video, "model": model}


@pytest.fixture(scope="module")
def graph(tiny):
    return SplitGraph(tiny["model"], (SIZE, SIZE))


def _sources(report):
    return [r["source"] for r in report.results]


# ---- in-process, no Ray ------------------------------------------------------------------------


def test_one_worker_runs_in_process_without_ray(tiny):
    code = textwrap.dedent(
        f"""
        import json, sys
        from litedet.distributed.stream import run_stream
        report = run_stream({str(tiny['video'])!r}, {str(tiny['weights'])!r}, workers=1, conf=0.0)
        print(json.dumps({{"ray": "ray" in sys.modules, "summary": report.to_dict(),
                          "sources": [r["source"] for r in report.results]}}))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["ray"] is False
    summary = out["summary"]
    assert summary["mode"] == "in-process"
    assert summary["frames_read"] == summary["frames_done"] == FRAMES
    assert summary["frames_dropped"] == 0 and summary["in_order"] is True
    assert out["sources"] == [f"{tiny['video']}:{i}" for i in range(FRAMES)]
    assert 0 < summary["workers"][0]["utilisation"] <= 1.0


class _FastCamera:
    """A camera stub that delivers a frame every 2 ms, much faster than the model runs."""

    def __init__(self, frames: int) -> None:
        self.left = frames

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return True

    def read(self):
        if self.left <= 0:
            return False, None
        self.left -= 1
        time.sleep(0.002)
        return True, np.full((SIZE, SIZE, 3), self.left % 255, np.uint8)

    def get(self, prop_id: int) -> float:
        return 500.0

    def release(self) -> None:
        self.left = 0


def test_live_source_drops_stale_frames_instead_of_lagging(tiny):
    from litedet.data.sources import open_source

    source = open_source(0, capture_factory=lambda _: _FastCamera(150))
    seen: list[int] = []
    report = run_stream(source, tiny["weights"], workers=1, on_result=lambda frame, _: seen.append(frame.index))
    assert report.frames_dropped > 0
    assert report.frames_read == report.frames_done + report.frames_dropped
    assert report.in_order and seen == sorted(seen) and len(set(seen)) == len(seen)
    assert seen[-1] - seen[0] + 1 > len(seen)  # gaps: stale frames were skipped, not queued


def test_stream_rejects_bad_arguments(tiny):
    with pytest.raises(ValueError, match="--workers"):
        run_stream(tiny["video"], tiny["weights"], workers=0)
    with pytest.raises(ValueError, match="--max-in-flight"):
        run_stream(tiny["video"], tiny["weights"], workers=2, max_in_flight=0)
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        run_stream(tiny["video"], tiny["video"].parent / "nope.safetensors")


# ---- split graph, profiles, planner ------------------------------------------------------------


def _check_cuts(model, graph, cuts):
    x = torch.rand(1, 3, SIZE, SIZE)
    n = len(graph.blocks)
    with torch.inference_mode():
        reference = model(x)
        for cut in cuts:
            outputs = graph.part(cut, n)(*graph.part(0, cut)(x))
            assert all(torch.equal(a, b) for a, b in zip(reference, outputs)), f"cut {cut} ({graph.blocks[cut - 1]})"


@pytest.mark.slow
def test_every_cut_reproduces_the_model(tiny, graph):
    _check_cuts(tiny["model"], graph, range(len(graph.blocks) + 1))


def test_cuts_reproduce_the_model_and_count_skip_tensors(tiny, graph):
    n = len(graph.blocks)
    in_neck = next(i for i, name in enumerate(graph.blocks) if name.startswith("neck.td3")) + 1
    _check_cuts(tiny["model"], graph, [0, 1, graph.blocks.index("backbone.stage4.0") + 1, in_neck, n - 1, n])
    assert graph.transfer_bytes(0) == 3 * SIZE * SIZE * 4
    assert graph.transfer_bytes(n) == 0
    # Inside stage4 the stride-8 and stride-16 maps (C3, C4) are still needed by the neck: they cross.
    cut = graph.blocks.index("backbone.stage4.0") + 1
    shapes = graph.live_shapes(cut)
    assert [1, 120, SIZE // 8, SIZE // 8] in shapes and [1, 232, SIZE // 16, SIZE // 16] in shapes
    assert graph.transfer_bytes(cut) == sum(int(np.prod(s)) * 4 for s in shapes)


def test_profile_round_trip_and_plan(tiny, graph, tmp_path):
    profile = profile_device(tiny["model"], SIZE, threads=1, warmup=0, repeats=1, device="a", graph=graph)
    assert len(profile.blocks) == len(graph.blocks) and len(profile.cuts) == len(graph.blocks) + 1
    assert all(b["latency_ms"] > 0 for b in profile.blocks)
    from litedet.bench.profile import profile_model

    assert sum(b["madds"] for b in profile.blocks) == profile_model(tiny["model"], SIZE).madds  # every conv in a block
    loaded = load_profile(profile.save(tmp_path / "a.json"))
    assert loaded == profile
    plan = plan_split(loaded, profile, "10MB/s", "5ms")
    totals = [c.total_ms for c in plan.candidates]
    assert plan.cut == int(np.argmin(totals))
    assert "<- best" in plan.table()
    other = DeviceProfile(**{**profile.to_dict(), "input_size": (32, 32)})
    with pytest.raises(ValueError, match="different models"):
        plan_split(profile, other, "10MB/s")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a litedet device profile"):
        load_profile(tmp_path / "bad.json")


def _synthetic(device: str, block_ms: list[float], sent: list[int]) -> DeviceProfile:
    blocks = [{"name": f"b{i}", "latency_ms": ms} for i, ms in enumerate(block_ms)]
    cuts = [{"cut": k, "after": "input" if k == 0 else f"b{k - 1}", "transfer_bytes": sent[k], "shapes": []} for k in range(len(sent))]
    return DeviceProfile(device, "toy", (64, 64), 1, blocks, cuts, sum(block_ms))


def test_planner_picks_the_argmin_of_a_synthetic_profile():
    # A is slow, B is 10x faster, the input is large and the activation after b1 is small:
    # the best plan computes b0, b1 on A and sends the small tensor.
    sent = [1_000_000, 800_000, 10_000, 400_000, 0]
    a = _synthetic("a", [10.0, 10.0, 10.0, 10.0], sent)
    b = _synthetic("b", [1.0, 1.0, 1.0, 1.0], sent)
    plan = plan_split(a, b, bandwidth=1e6, latency=0.002)  # 1 MB/s, 2 ms
    expected = [
        0 + (0.002 + 1.0) * 1e3 + 4,
        10 + (0.002 + 0.8) * 1e3 + 3,
        20 + (0.002 + 0.01) * 1e3 + 2,
        30 + (0.002 + 0.4) * 1e3 + 1,
        40.0,
    ]
    assert [c.total_ms for c in plan.candidates] == pytest.approx(expected)
    assert plan.cut == 2 and plan.best.after == "b1"
    # A fast link moves everything to the fast device B.
    assert plan_split(a, b, bandwidth="10GB/s").cut == 0
    # A dead-slow link keeps everything on A.
    assert plan_split(a, b, bandwidth="1kB/s").cut == 4
    # Calibration scales the blocks to add up to the whole network measured in one piece.
    slow_whole = DeviceProfile(**{**a.to_dict(), "total_ms": 80.0})
    assert plan_split(slow_whole, b, bandwidth=1e6).candidates[4].total_ms == pytest.approx(80.0)
    assert plan_split(slow_whole, b, bandwidth=1e6, calibrate=False).candidates[4].total_ms == pytest.approx(40.0)


def test_units():
    assert parse_bandwidth("10MB/s") == 10e6
    assert parse_bandwidth("100Mbit/s") == parse_bandwidth("100Mb/s") == parse_bandwidth("100mbps") == 12.5e6
    assert parse_bandwidth("1MiB/s") == 1024**2
    assert parse_latency("5ms") == pytest.approx(0.005) and parse_latency("0.2s") == 0.2 and parse_latency(0) == 0
    for bad in ("fast", "10 parsecs", "0MB/s"):
        with pytest.raises(ValueError, match="bandwidth"):
            parse_bandwidth(bad)
    with pytest.raises(ValueError, match="latency"):
        parse_latency("soon")


# ---- on a two-node Ray cluster -----------------------------------------------------------------


cluster_nodes: dict = {}  # the Cluster object, for tests that add and remove nodes


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    store = 80 * 1024**2
    nodes = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "resources": {"device_a": 1}, "object_store_memory": store, "include_dashboard": False},
    )
    try:
        nodes.add_node(num_cpus=2, resources={"device_b": 1}, object_store_memory=store)
        ray.init(address=nodes.address, log_to_driver=False)
        cluster_nodes["cluster"] = nodes
        yield ray
    finally:
        cluster_nodes.clear()
        ray.shutdown()
        nodes.shutdown()


def test_stream_on_ray_survives_a_killed_worker(tiny, cluster):
    ray = cluster
    reference = run_stream(tiny["video"], tiny["weights"], workers=1, conf=0.0)
    pool_holder = {}
    killed = []

    def on_result(frame, _detections):
        if frame.index == 3 and not killed:
            victim = next(iter(pool_holder["pool"].actors.values()))
            ray.kill(victim)  # mid-stream: this actor still holds frames
            killed.append(victim)

    report = run_stream(
        tiny["video"], tiny["weights"], workers=2, address="auto", conf=0.0, max_in_flight=6,
        on_start=lambda pool: pool_holder.setdefault("pool", pool), on_result=on_result,
    )
    assert killed
    assert report.frames_read == report.frames_done == FRAMES and report.in_order
    assert _sources(report) == [f"{tiny['video']}:{i}" for i in range(FRAMES)]  # each once, in order
    assert report.results == reference.results  # same detections as one local replica
    assert report.redispatched >= 1 and report.restarts == 1
    assert sum(w.frames for w in report.workers) == FRAMES
    assert any(w.died for w in report.workers)
    summary = report.to_dict()
    assert {"frames_read", "frames_done", "frames_dropped", "in_order", "fps", "workers"} <= set(summary)


def test_split_on_two_nodes_matches_single_device_and_handles_node_loss(tiny, graph, cluster):
    ray = cluster
    from litedet.distributed.split import SplitBackend
    from litedet.engine.predictor import Predictor
    from litedet.runtime import open_backend

    config = tiny["model"].config
    images = []
    capture = cv2.VideoCapture(str(tiny["video"]))
    for _ in range(3):
        ok, image = capture.read()
        assert ok
        images.append(image)
    capture.release()
    local = Predictor(open_backend(tiny["weights"], threads=1), conf=0.0, auto=False)
    expected = local.predict(images)

    cut = graph.blocks.index("backbone.stage4.0") + 1  # C3 and C4 cross the link with the stage4 map
    backend = SplitBackend(graph, config, cut, threads_a=1, threads_b=1)
    try:
        assert backend.placement[0]["node"] != backend.placement[1]["node"]
        split = Predictor(backend, conf=0.0).predict(images)
        for got, want in zip(split, expected):
            assert len(got) == len(want) > 0
            np.testing.assert_array_equal(got.boxes, want.boxes)
            np.testing.assert_array_equal(got.scores, want.scores)
            np.testing.assert_array_equal(got.class_ids, want.class_ids)
        ray.kill(backend.actors[1])
        with pytest.raises(RuntimeError, match="device_b.*--fallback local"):
            backend.run(np.zeros((1, 3, SIZE, SIZE), np.float32))
    finally:
        backend.close()

    # No node offers the resource: a clear error, or the whole model locally with fallback="local".
    with pytest.raises(RuntimeError, match="no node offers the custom resources 'device_a' and 'device_x'"):
        SplitBackend(graph, config, cut, device_b="device_x", start_timeout_s=2)
    backend = SplitBackend(graph, config, cut, device_b="device_x", fallback="local", start_timeout_s=2)
    try:
        assert backend.fell_back
        got = Predictor(backend, conf=0.0).predict(images[:1])[0]
        np.testing.assert_array_equal(got.boxes, expected[0].boxes)
        np.testing.assert_array_equal(got.scores, expected[0].scores)
    finally:
        backend.close()


def test_cli_plan_prints_every_candidate_and_the_best(tmp_path, capsys):
    from litedet.cli import main

    sent = [1_000_000, 800_000, 10_000, 400_000, 0]
    paths = []
    for name, ms in (("a", 10.0), ("b", 1.0)):
        paths.append(_synthetic(name, [ms] * 4, sent).save(tmp_path / f"{name}.json"))
    argv = ["split", "plan", "--devices", f"{paths[0]},{paths[1]}", "--bandwidth", "1MB/s", "--latency", "2ms",
            "-o", str(tmp_path / "plan.json"), "--json"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    plan = json.loads(captured.out)  # --json: stdout is the JSON alone, the table goes to stderr
    assert plan["cut"] == 2 and len(plan["candidates"]) == 5
    lines = captured.err.strip().splitlines()
    assert sum("| " in line and "total" not in line and "---" not in line for line in lines) == 5
    from litedet.distributed.split import plan_from_dict

    assert plan_from_dict(tmp_path / "plan.json").cut == 2
    assert main(["split", "plan", "--devices", str(paths[0]), "--bandwidth", "1MB/s"]) == 2
    assert "two profiles" in capsys.readouterr().err


def test_cli_stream_reports_user_errors(tiny, capsys):
    from litedet.cli import main

    assert main(["stream", "--source", str(tiny["video"]), "--weights", str(tiny["weights"]), "--workers", "0"]) == 2
    assert "--workers must be >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_split_node_that_disappears_fails_clearly_or_falls_back(tiny, graph, cluster):
    from litedet.distributed.split import SplitBackend

    ray = cluster
    config = tiny["model"].config
    batch = np.random.default_rng(0).random((1, 3, SIZE, SIZE), dtype=np.float32)
    with torch.inference_mode():
        expected = [t.numpy() for t in graph.part(0, len(graph.blocks))(torch.from_numpy(batch))]
    for fallback in ("error", "local"):
        node = cluster_nodes["cluster"].add_node(num_cpus=1, resources={"device_c": 1}, object_store_memory=80 * 1024**2)
        backend = SplitBackend(graph, config, 3, device_b="device_c", threads_a=1, threads_b=1, fallback=fallback)
        try:
            assert [np.array_equal(a, b) for a, b in zip(backend.run(batch), expected)] == [True] * 3
            cluster_nodes["cluster"].remove_node(node)
            if fallback == "error":
                with pytest.raises(RuntimeError, match="device_c.*--fallback local"):
                    backend.run(batch)
            else:
                assert [np.array_equal(a, b) for a, b in zip(backend.run(batch), expected)] == [True] * 3
                assert backend.fell_back
        finally:
            backend.close()


def test_stream_worker_that_cannot_load_fails_clearly(tiny, cluster, tmp_path):
    missing = tmp_path / "elsewhere.safetensors"  # absent on the worker nodes
    with pytest.raises(RuntimeError, match="failed to load .*elsewhere.safetensors"):
        run_stream(tiny["video"], missing, workers=2, address="auto", start_timeout_s=60)


# ---- a local cluster litedet starts: loopback only, nothing left behind ----------------------------


def test_watchdog_stops_the_tree_when_the_driver_pipe_closes():
    """The watchdog records a process tree and ends it when its stdin closes (as on a SIGKILLed
    driver), within the grace period; no Ray needed."""
    psutil = pytest.importorskip("psutil")
    from litedet.distributed.watchdog import spawn_watchdog

    # a parent that ignores SIGTERM, with a child: both must go (SIGKILL after the grace period)
    code = "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " \
           "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    root = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.time() + 20
        while not psutil.Process(root.pid).children() and time.time() < deadline:
            time.sleep(0.05)
        tree = [psutil.Process(root.pid), *psutil.Process(root.pid).children(recursive=True)]
        assert len(tree) == 2
        watchdog = spawn_watchdog([tree[0]])
        time.sleep(1.5)  # let it record the child
        watchdog.stdin.close()
        assert watchdog.wait(timeout=20) == 0
        root.wait(timeout=5)
        _, alive = psutil.wait_procs(tree, timeout=5)
        assert alive == []
    finally:
        if root.poll() is None:
            root.kill()


# The driver of scripts/ray_orphans.py: streams with 2 Ray workers and prints their pids and
# listening sockets, then the frames done.
RAY_ORPHANS = Path(__file__).resolve().parents[1] / "scripts" / "ray_orphans.py"

LOOPBACK = ("127.0.0.1", "::ffff:127.0.0.1", "::1")


def _survivors(psutil, pids, timeout_s):
    deadline = time.time() + timeout_s
    while True:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive or time.time() > deadline:
            return alive
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("ending", ["exit", "sigkill"])
def test_local_ray_listens_on_loopback_only_and_leaves_nothing(tiny, ending, tmp_path):
    """`stream --workers 2` without --address: every listening socket of every process Ray starts
    is on 127.0.0.1, and none of them outlive the driver (normal exit, or SIGKILL: gone within
    10 s, where Ray alone leaves its agents for ~60 s)."""
    pytest.importorskip("ray")
    psutil = pytest.importorskip("psutil")
    import signal

    video = tiny["video"]
    if ending == "sigkill":  # a source that does not run out before the kill
        video = tmp_path / "long.avi"
        writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (SIZE, SIZE))
        for i in range(1000):
            writer.write(np.full((SIZE, SIZE, 3), i % 250, np.uint8))
        writer.release()
    driver = subprocess.Popen([sys.executable, str(RAY_ORPHANS), "--driver", str(tiny["weights"]), str(video), str(10**6)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = driver.stdout.readline()
        assert line, driver.stderr.read()[-2000:]
        started = json.loads(line)
        assert len(started["pids"]) >= 4 and started["listening"]
        open_to_network = [s for s in started["listening"] if s[1] not in LOOPBACK]
        assert open_to_network == [], open_to_network
        if ending == "sigkill":
            driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=300)
        assert _survivors(psutil, started["pids"], timeout_s=10) == []
        if ending == "exit":
            assert driver.returncode == 0
            assert json.loads(driver.stdout.readline()) == {"done": FRAMES}
    finally:
        if driver.poll() is None:
            driver.kill()


@pytest.mark.slow
def test_stream_cli_sigterm_ends_like_ctrl_c(tiny, tmp_path):
    """SIGTERM to `litedet stream --workers 2 --save`: exit 130, every frame done before it is in
    detections.jsonl, summary.json is written, and no Ray process outlives the driver."""
    pytest.importorskip("ray")
    psutil = pytest.importorskip("psutil")
    import signal

    video = tmp_path / "long.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (SIZE, SIZE))
    for i in range(3000):
        writer.write(np.full((SIZE, SIZE, 3), i % 250, np.uint8))
    writer.release()
    out = tmp_path / "out"
    driver = subprocess.Popen(
        [sys.executable, "-m", "litedet", "stream", "--source", str(video), "--weights", str(tiny["weights"]),
         "--workers", "2", "--save", str(out), "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        results = out / "detections.jsonl"
        deadline = time.time() + 300
        while time.time() < deadline and driver.poll() is None and not (results.is_file() and results.stat().st_size > 0):
            time.sleep(0.2)
        assert driver.poll() is None, driver.stderr.read()[-2000:]
        ray_pids = [p.pid for p in psutil.Process(driver.pid).children(recursive=True)]
        driver.send_signal(signal.SIGTERM)
        _, err = driver.communicate(timeout=120)
        assert driver.returncode == 130, err[-2000:]
        assert "Traceback" not in err
        summary = json.loads((out / "summary.json").read_text())
        lines = results.read_text().splitlines()
        assert 0 < summary["frames_done"] == len(lines) < 3000
        assert _survivors(psutil, ray_pids, timeout_s=10) == []
    finally:
        if driver.poll() is None:
            driver.kill()


def test_start_local_ray_asks_for_loopback_and_no_metrics(monkeypatch):
    """Fast check of what start_local_ray asks of ray.init (the slow test checks the sockets):
    node IP 127.0.0.1 with Ray's 'no cluster' switch on only during init, dashboard and metrics
    export off, and a SIGTERM handler the application set kept across ray.init."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("psutil")
    import signal

    from ray._private import ray_constants

    from litedet.distributed import cluster

    seen = {}

    def fake_init(**kwargs):
        seen.update(kwargs, cluster_switch=ray_constants.ENABLE_RAY_CLUSTER)
        signal.signal(signal.SIGTERM, lambda *_: None)  # as ray.init does

    def handler(*_):
        pass

    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: "127.0.0.1")
    before = ray_constants.ENABLE_RAY_CLUSTER
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        cluster.start_local_ray(2)
        assert signal.getsignal(signal.SIGTERM) is handler
    finally:
        signal.signal(signal.SIGTERM, previous)
        cluster.shutdown_ray(ray)
    assert seen["_node_ip_address"] == "127.0.0.1" and seen["cluster_switch"] is False
    assert ray_constants.ENABLE_RAY_CLUSTER == before
    assert seen["include_dashboard"] is False and seen["_system_config"] == {"enable_metrics_collection": False}
    assert seen["dashboard_host"] == "127.0.0.1"


def test_split_builds_detectors_at_their_size_and_backbones_at_a_given_one():
    from litedet.distributed.split import build_model

    _, size, name = build_model("v5lite-e", None, None)
    assert size == (320, 320) and name == "v5lite-e"
    assert build_model("v5lite-e", None, 256)[1] == (256, 256)
    with pytest.raises(ValueError, match="shufflenetv2_x0_5 is a backbone without an input size of its own"):
        build_model("shufflenetv2_x0_5", None, None)
    network, size, _ = build_model("shufflenetv2_x0_5", None, 64)
    assert size == (64, 64) and not network.training
