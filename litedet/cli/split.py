"""`litedet split profile|plan|run`: split one detector between two devices (Neurosurgeon-style).

`profile` measures per-block latency and per-cut transfer size on this device; `plan` combines two
profiles with a link bandwidth and latency and prints every candidate cut's predicted latency;
`run` executes the split as two Ray actors placed by custom resources.
"""

from __future__ import annotations

import argparse
import json
import logging

from litedet.cli.common import add_json_option, add_model_option, add_progress_option, human_output, print_json


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_option(parser)
    parser.add_argument("--weights", default=None,
                        help="litedet .safetensors checkpoint (its .json sidecar beside it; default: random weights of --model)")
    parser.add_argument("--imgsz", type=int, default=None, help="input size (default: the model's)")
    add_progress_option(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    profile = sub.add_parser("profile", help="per-block latency and transfer sizes on this device -> JSON")
    _model_arguments(profile)
    profile.add_argument("-o", "--output", required=True, help="device profile JSON to write")
    profile.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    profile.add_argument("--repeats", type=int, default=30, help="timed runs per block (default 30)")
    profile.add_argument("--warmup", type=int, default=5, help="untimed runs per block (default 5)")
    add_json_option(profile, "the device profile")
    profile.add_argument("--device", default=None, help="name for this device (default HOST-Nt)")

    plan = sub.add_parser("plan", help="choose the cut minimising A + transfer + B")
    _model_arguments(plan)
    plan.add_argument("--devices", required=True, help="A.json,B.json: profiles of device A (camera) and device B")
    plan.add_argument("--bandwidth", required=True, help="link bandwidth, e.g. 10MB/s, 100Mbit/s")
    plan.add_argument("--latency", default="0ms", help="link latency per transfer, e.g. 5ms (default 0ms)")
    plan.add_argument("--no-calibrate", action="store_true",
                      help="use the block latencies as measured (default: scale them to add up to the whole network's)")
    plan.add_argument("-o", "--output", default=None, help="also write the plan as JSON")
    add_json_option(plan, "the plan")

    run_parser = sub.add_parser("run", help="run the split on two Ray nodes")
    _model_arguments(run_parser)
    run_parser.add_argument("--source", required=True, help="image, folder, video or stream")
    run_parser.add_argument("--cut", type=int, default=None, help="cut index (see `split plan`; default: from --plan or --devices)")
    run_parser.add_argument("--plan", default=None, help="plan JSON written by `split plan -o` (its cut and prediction)")
    run_parser.add_argument("--devices", default=None, help="A.json,B.json: plan now (with --bandwidth) and run the best cut")
    run_parser.add_argument("--bandwidth", default=None, help="with --devices: the planned link; with --simulate: also slept")
    run_parser.add_argument("--latency", default="0ms", help="link latency, e.g. 5ms (default 0ms)")
    run_parser.add_argument("--simulate", action="store_true",
                            help="simulate the link on B: sleep(latency + bytes / bandwidth) before computing")
    run_parser.add_argument("--address", default=None, help="Ray cluster ('auto' or HOST:PORT); default: a local Ray with both resources")
    run_parser.add_argument("--ray-dashboard", action="store_true",
                            help="with a local Ray (no --address): also start the Ray dashboard and Prometheus metrics, on 127.0.0.1 only (default: off)")
    run_parser.add_argument("--device-a", default="device_a", help="Ray custom resource of device A (default device_a)")
    run_parser.add_argument("--device-b", default="device_b", help="Ray custom resource of device B (default device_b)")
    run_parser.add_argument("--threads-a", type=int, default=None, help="torch threads of part A (default: torch's own choice on that node)")
    run_parser.add_argument("--threads-b", type=int, default=None, help="torch threads of part B (default: torch's own choice on that node)")
    run_parser.add_argument("--fallback", choices=("error", "local"), default="error",
                            help="when a device disappears: fail (default) or finish locally")
    run_parser.add_argument("--conf", type=float, default=0.25, help="minimum score (default 0.25)")
    run_parser.add_argument("--iou", type=float, default=0.45, help="NMS IoU threshold (default 0.45)")
    run_parser.add_argument("--max-frames", type=int, default=None, help="stop after this many frames (default: all)")
    add_json_option(run_parser, "the run summary")


def _profiles(devices: str):
    from litedet.distributed.split import load_profile

    paths = [p for p in devices.split(",") if p]
    if len(paths) != 2:
        raise ValueError(f"--devices needs two profiles A.json,B.json, got {devices!r}")
    return load_profile(paths[0]), load_profile(paths[1])


def run(args: argparse.Namespace) -> int:
    from litedet.cli.common import resolve_model

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args.model = resolve_model(args.weights, args.model)
    with human_output(args.json):
        summary = _run(args)
    if args.json:
        print_json(summary)
    return 0


def _run(args: argparse.Namespace) -> dict:
    """Run the action, print its human summary; returns what ``--json`` prints."""
    if args.action == "profile":
        from litedet.distributed.split import profile_device

        profile = profile_device(
            args.model, args.imgsz, weights=args.weights, threads=args.threads, warmup=args.warmup,
            repeats=args.repeats, device=args.device,
        )
        path = profile.save(args.output)
        print(f"{profile.device}: {profile.model} @{profile.input_size[0]}x{profile.input_size[1]}, "
              f"{len(profile.blocks)} blocks, {profile.threads} thread(s): whole network {profile.total_ms:.2f} ms, "
              f"sum of blocks {sum(profile.block_ms()):.2f} ms -> {path}")
        return {**profile.to_dict(), "path": str(path)}
    if args.action == "plan":
        from litedet.distributed.split import plan_split

        profile_a, profile_b = _profiles(args.devices)
        if args.model and args.model != profile_a.model:
            raise ValueError(f"--model {args.model} does not match the profiles' model {profile_a.model}")
        plan = plan_split(profile_a, profile_b, args.bandwidth, args.latency, calibrate=not args.no_calibrate)
        print(plan.table())
        if args.output:
            from pathlib import Path

            from litedet.config import write_text_atomic

            write_text_atomic(Path(args.output), json.dumps(plan.to_dict(), indent=2) + "\n")
        return plan.to_dict()

    from litedet.distributed.split import plan_from_dict, plan_split, run_split

    plan = None
    if args.plan:
        plan = plan_from_dict(args.plan)
    elif args.devices:
        if not args.bandwidth:
            raise ValueError("--devices needs --bandwidth to plan")
        plan = plan_split(*_profiles(args.devices), args.bandwidth, args.latency)
    if args.simulate and not args.bandwidth:
        raise ValueError("--simulate needs --bandwidth")
    report = run_split(
        args.source, model=args.model, weights=args.weights, imgsz=args.imgsz, cut=args.cut, plan=plan,
        address=args.address, device_a=args.device_a, device_b=args.device_b, threads_a=args.threads_a,
        threads_b=args.threads_b, fallback=args.fallback, bandwidth=args.bandwidth if args.simulate else None,
        latency=args.latency, conf=args.conf, iou=args.iou, max_frames=args.max_frames,
        ray_dashboard=args.ray_dashboard,
    )
    for line in report.summary_lines():
        print(line)
    summary = report.to_dict()
    summary.pop("results")
    return summary
