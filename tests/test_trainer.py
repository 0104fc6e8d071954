"""The trainer: exact resume, NaN handling, new-class fine-tuning, checkpoints, the CLI.

A tiny run: v5lite-e at 64 px on 8 generated images, CPU, no workers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from litedet.data.datasets import load_data_config
from litedet.engine import loss as loss_module
from litedet.engine import trainer as trainer_module
from litedet.engine.config import TrainConfig
from litedet.engine.trainer import Trainer, TrainingDivergedError, load_training_state, train

from conftest import TINY


def _weights(path: Path) -> dict[str, torch.Tensor]:
    state = load_training_state(path)
    return {**{f"model.{k}": v for k, v in state["model"].items()}, **{f"ema.{k}": v for k, v in state["ema"].items()}}


def test_resume_after_step_k_is_exact(tiny_data, tmp_path):
    full = train(TrainConfig(data=str(tiny_data), out=str(tmp_path / "full"), **TINY))
    assert full.epochs_done == 2 and full.batches == 8 and not full.stopped_early
    # Stop in the middle of epoch 2 between two optimizer steps (nbs 4 = 2 batches accumulated).
    part = train(TrainConfig(data=str(tiny_data), out=str(tmp_path / "part"), stop_after_step=5, **TINY))
    assert part.stopped_early and part.batches == 5
    state = load_training_state(tmp_path / "part" / "last.pt")
    assert (state["epoch"], state["epoch_step"], state["step"]) == (1, 1, 5)
    resumed = Trainer.from_checkpoint(tmp_path / "part").fit()
    assert resumed.batches == 8 and resumed.epochs_done == 2 and resumed.steps == full.steps
    a, b = _weights(tmp_path / "full" / "last.pt"), _weights(tmp_path / "part" / "last.pt")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"resumed run differs in {different[:5]}"
    # Same metrics, the CSV has one row per epoch, exported weights and plots exist.
    assert resumed.last_map50_95 == pytest.approx(full.last_map50_95)
    rows = (tmp_path / "part" / "results.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("epoch,train/box_loss")
    for name in ("best.safetensors", "best.json", "last.safetensors", "last.json", "results.png", "pr_curve.png"):
        assert (tmp_path / "part" / name).is_file(), name


def test_checkpoint_is_weights_only_loadable(tiny_data, tmp_path):
    train(TrainConfig(data=str(tiny_data), out=str(tmp_path), stop_after_step=1, **TINY))
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    for key in ("model", "ema", "optimizer", "scheduler", "epoch", "step", "rng", "config"):
        assert key in state
    assert {"python", "numpy", "torch"} <= set(state["rng"])
    assert not list(tmp_path.glob(".last.pt.*"))  # no temp file left from the atomic write


def test_nan_loss_stops_naming_step_images_and_checkpoint(tiny_data, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = loss_module.YoloLoss.forward

    def poisoned(self, outputs, targets):
        calls["n"] += 1
        total, items = original(self, outputs, targets)
        return (total * float("nan"), items) if calls["n"] == 6 else (total, items)

    monkeypatch.setattr(loss_module.YoloLoss, "forward", poisoned)
    with pytest.raises(TrainingDivergedError) as info:
        train(TrainConfig(data=str(tiny_data), out=str(tmp_path), **TINY))
    message = str(info.value)
    assert "at step 6 (epoch 2, batch 2)" in message
    assert message.count(".jpg") == 2 and "images/train/" in message
    assert f"last good checkpoint: {tmp_path / 'last.pt'}" in message
    assert load_training_state(tmp_path / "last.pt")["step"] == 4  # end of epoch 1, before the NaN


def test_new_class_count_reinitialises_the_head(tiny_data, tmp_path, caplog):
    from litedet.models.checkpoint import save_checkpoint_weights
    from litedet.models.registry import create_model

    torch.manual_seed(1)
    source = create_model("v5lite-e", num_classes=5, input_size=64)
    save_checkpoint_weights(source, tmp_path / "five.safetensors")
    config = TrainConfig(data=str(tiny_data), out=str(tmp_path / "run"), weights=str(tmp_path / "five.safetensors"), **TINY)
    with caplog.at_level("INFO", logger="litedet.engine.trainer"):
        trainer = Trainer(config)
    assert "5 classes in the checkpoint, 2 in the data: head re-initialised for 2 classes" in caplog.text
    assert trainer.model.num_classes == 2 and trainer.model.names == ["a", "b"]
    kept = source.backbone.state_dict()
    for key, value in trainer.model.backbone.state_dict().items():
        assert torch.equal(value, kept[key]), key
    # Per anchor, box (tx, ty, tw, th) and objectness rows come from the checkpoint; class rows are new.
    assert "class-agnostic box and objectness outputs kept" in caplog.text
    anchors = source.head.num_anchors
    for old, new in zip(source.head.convs, trainer.model.head.convs):
        old_w, new_w = old.weight.reshape(anchors, 10, -1), new.weight.reshape(anchors, 7, -1)
        assert torch.equal(new_w[:, :5], old_w[:, :5])
        assert torch.equal(new.bias.reshape(anchors, 7)[:, :5], old.bias.reshape(anchors, 10)[:, :5])
        assert not torch.equal(new_w[:, 5:7], old_w[:, 5:7])
        torch.testing.assert_close(new.bias.reshape(anchors, 7)[:, 5:], torch.full((anchors, 2), math.log(0.6 / 1.01)),
                                   atol=0.5, rtol=0)  # the class prior (small random conv bias on top)
    result = trainer.fit()
    assert result.best_weights is not None
    from litedet.config import ModelConfig

    assert ModelConfig.load(tmp_path / "run" / "best.json").names == ["a", "b"]


def test_cli_train_prints_summary_and_reports_bad_data(tiny_data, tmp_path, capsys):
    from litedet.cli import main

    code = main(["train", "--data", str(tiny_data), "--model", "v5lite-e", "--epochs", "1", "--batch", "4",
                 "--imgsz", "64", "--workers", "0", "--device", "cpu", "--out", str(tmp_path / "run"), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "split  images  background" in out and "train       8" in out
    assert "best mAP50-95 / mAP50" in out and (tmp_path / "run" / "last.pt").is_file()
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"path: {tiny_data.parent}\ntrain: images/train\nnames: [a, b]\n")
    assert main(["train", "--data", str(bad), "--out", str(tmp_path / "bad")]) == 2
    assert "missing key 'val'" in capsys.readouterr().err


def test_config_rejects_unknown_keys(tmp_path):
    experiment = tmp_path / "exp.yaml"
    experiment.write_text("data: d.yaml\nepochs: 3\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"unknown keys \['learning_rate'\]"):
        TrainConfig.load(experiment)
    experiment.write_text("data: d.yaml\nlr0: 1e-3\naugment: {mosaic: 0.5}\n")
    config = TrainConfig.load(experiment, epochs=7, batch=None)
    assert config.lr0 == 0.001 and config.epochs == 7 and config.batch == 16 and config.augment.mosaic == 0.5
    with pytest.raises(ValueError, match="imgsz must be a multiple of 32"):
        TrainConfig(imgsz=100)
    with pytest.raises(ValueError, match="CUDA is not available"):
        if torch.cuda.is_available():
            raise ValueError("CUDA is not available (skipped on a GPU machine)")
        trainer_module.select_device("cuda")


def test_loader_items_depend_only_on_seed_epoch_and_index(tiny_data):
    from litedet.data.augment import AugmentConfig
    from litedet.data.loader import DetectionTrainDataset, EpochSampler, collate

    train_set = load_data_config(tiny_data).load_split("train")
    first = DetectionTrainDataset(train_set, 64, AugmentConfig(), seed=3)
    second = DetectionTrainDataset(train_set, 64, AugmentConfig(), seed=3, cache=True)
    for dataset in (first, second):
        dataset.set_epoch(2)
    _ = second[5]  # a different access order must not change what item 1 is
    a, b = first[1], second[1]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[0].shape == (3, 64, 64)
    second.set_epoch(3)
    assert not torch.equal(second[1][0], a[0])
    images, targets, paths = collate([first[0], first[1]])
    assert images.shape == (2, 3, 64, 64) and targets.shape[1] == 6 and len(paths) == 2
    assert set(targets[:, 0].tolist()) <= {0.0, 1.0} and (targets[:, 2:] >= 0).all() and (targets[:, 2:] <= 1).all()
    sampler = EpochSampler(8, seed=3)
    sampler.set_epoch(4)
    order = sampler.order()
    sampler.set_epoch(4, start=3)
    assert list(sampler) == order[3:] and sorted(order) == list(range(8))


def test_imagenet_backbone_loads_into_a_shufflenet_detector(tmp_path):
    from litedet.engine.trainer import load_imagenet_backbone
    from litedet.models.registry import create_model
    from conftest import require_shared

    weights = require_shared("weights", "shufflenetv2-0.5x-imagenet", "shufflenetv2.pth")
    model = create_model("yolo-shufflenetv2_x0_5", num_classes=1, input_size=64)
    summary = load_imagenet_backbone(model, weights)
    assert "0 file keys not placed" in summary
    source = torch.load(weights, map_location="cpu", weights_only=True)
    torch.testing.assert_close(model.backbone.conv1.conv.weight, source["first_conv.0.weight"])
    assert model(torch.zeros(1, 3, 64, 64))[0].shape[1] == 3 * 6
    # What the trainer saves must reload (with the default routing) as the same network.
    from litedet.models.checkpoint import load_detector, save_checkpoint_weights

    path = save_checkpoint_weights(model.eval(), tmp_path / "m.safetensors")
    reloaded, _ = load_detector(path)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(model(x), reloaded(x)):
            torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="does not fit v5lite-e .*first_conv.0.weight"):
        load_imagenet_backbone(create_model("v5lite-e", num_classes=1), weights)


def test_shipped_experiment_and_data_yamls_parse():
    """The experiment YAMLs behind the README's measurements must stay loadable as the config
    evolves (an unknown or retyped key would otherwise only surface in a long run)."""
    root = Path(__file__).resolve().parents[1] / "configs"
    experiments = sorted((root / "experiments").glob("*.yaml"))
    assert experiments, f"no experiment YAMLs in {root / 'experiments'}"
    for path in experiments:
        config = TrainConfig.load(path)
        assert config.data and (root.parent / config.data).is_file(), f"{path}: data {config.data!r} not found"
        assert config.threads == 1 and config.epochs >= 1
    from conftest import shared_dir

    if not shared_dir().exists():
        pytest.skip("../shared not found: dataset YAMLs not resolved")
    for path in sorted((root / "data").glob("*.yaml")):
        data = load_data_config(path)
        assert data.splits.get("train") and data.splits.get("val"), path


def _fold_batchnorms(model: torch.nn.Module) -> None:
    """What an import from ncnn/ONNX leaves: BN statistics folded into the conv, BN = identity + bias."""
    for module in model.modules():
        children = list(module.children())
        for conv, bn in zip(children, children[1:]):
            if isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d):
                with torch.no_grad():
                    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                    conv.weight.mul_(scale.view(-1, 1, 1, 1))
                    bn.bias.copy_(bn.bias - bn.running_mean * scale + (conv.bias * scale if conv.bias is not None else 0))
                    if conv.bias is not None:
                        conv.bias.zero_()
                    bn.running_mean.zero_(), bn.running_var.fill_(1 - bn.eps), bn.weight.fill_(1)


def test_folded_batchnorm_gets_statistics_and_keeps_the_eval_function():
    from litedet.layers.conv import is_identity_batchnorm, restore_folded_batchnorm
    from litedet.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("v5lite-e", num_classes=2, input_size=64)
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):  # "trained" statistics
        with torch.no_grad():
            bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(0.5, 1.5)
    _fold_batchnorms(model.eval())
    layers = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert layers and all(is_identity_batchnorm(m) for m in layers)
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        model.train()
        broken = model(x)  # batch statistics on folded weights: a different function
    assert max((a - b).abs().max().item() for a, b in zip(before, broken)) > 0.5
    _fold_batchnorms(model.eval())  # running stats moved in the train pass above; fold again
    with torch.no_grad():
        before = model(x)
    restored, images = restore_folded_batchnorm(model, [x[:2], x[2:]])
    assert restored == len(layers) and images == 4 and not model.training
    assert not any(is_identity_batchnorm(m) for m in layers)
    with torch.no_grad():
        for a, b in zip(before, model(x)):  # eval mode: exactly the same function
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        model.train()
        for a, b in zip(before, model(x)):  # train mode on the calibration images: the same function too
            torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)
    assert restore_folded_batchnorm(model, [x]) == (0, 0)  # nothing left to restore


# ---------------------------------------------------------------------------------------------
# fine-tuning on a subset of the checkpoint's classes, optimizer steps, run folders, faults


def _checkpoint(tmp_path: Path, arch: str = "v5lite-e", names=("x", "b", "y", "a", "z"), source: str = "") -> Path:
    from litedet.models.checkpoint import save_checkpoint_weights
    from litedet.models.registry import create_model

    torch.manual_seed(1)
    model = create_model(arch, num_classes=len(names), names=list(names), input_size=64)
    model.source = source
    return save_checkpoint_weights(model, tmp_path / f"{arch}-{len(names)}.safetensors")


def test_classes_among_the_checkpoints_keep_their_head_rows(tiny_data, tmp_path, caplog):
    from litedet.models.checkpoint import load_detector

    weights = _checkpoint(tmp_path)  # classes x, b, y, a, z; the data has a, b
    source, _ = load_detector(weights)
    config = TrainConfig(data=str(tiny_data), out=str(tmp_path / "run"), weights=str(weights), **TINY)
    with caplog.at_level("INFO", logger="litedet.engine.trainer"):
        trainer = Trainer(config)
    assert "are among the checkpoint's 5: their head rows kept" in caplog.text
    anchors = source.head.num_anchors
    for old, new in zip(source.head.convs, trainer.model.head.convs):
        old_w, new_w = old.weight.reshape(anchors, 10, -1), new.weight.reshape(anchors, 7, -1)
        old_b, new_b = old.bias.reshape(anchors, 10), new.bias.reshape(anchors, 7)
        for new_row, old_row in ((0, 0), (4, 4), (5, 5 + 3), (6, 5 + 1)):  # box, objectness, a <- 3, b <- 1
            assert torch.equal(new_w[:, new_row], old_w[:, old_row]) and torch.equal(new_b[:, new_row], old_b[:, old_row])
    # the same function on the kept classes: the new head's outputs are a slice of the old head's
    x = torch.rand(1, 3, 64, 64)
    trainer.model.eval()
    with torch.no_grad():
        for a, b in zip(source(x), trainer.model(x)):
            a = a.reshape(1, anchors, 10, *a.shape[2:])[:, :, [0, 1, 2, 3, 4, 8, 6]]
            torch.testing.assert_close(b.reshape(1, anchors, 7, *b.shape[2:]), a)


def test_model_comes_from_the_sidecar_and_a_mismatch_is_an_error(tiny_data, tmp_path):
    weights = _checkpoint(tmp_path, "v5lite-s", names=("a", "b"))
    trainer = Trainer(TrainConfig(data=str(tiny_data), out=str(tmp_path / "r"), weights=str(weights),
                                  **{**TINY, "model": ""}))
    assert trainer.config.model == "v5lite-s" and trainer.model.model_name == "v5lite-s"
    with pytest.raises(ValueError, match="--model v5lite-e does not match .*sidecar says v5lite-s"):
        Trainer(TrainConfig(data=str(tiny_data), out=str(tmp_path / "r2"), weights=str(weights), **TINY))


def test_every_epoch_ends_with_an_optimizer_step_and_steps_count_updates(tiny_data, tmp_path):
    # 4 batches of 2 per epoch and a nominal batch of 64: without the epoch-end step the weights
    # would move once in 32 batches; the summary counts optimizer steps, not batches.
    config = dict(TINY, nbs=64, warmup_epochs=0, eval_interval=1)
    result = train(TrainConfig(data=str(tiny_data), out=str(tmp_path), **config))
    assert result.batches == 8 and result.steps == 2 and result.accumulate == 32


def test_save_period_mid_epoch_and_mid_accumulation_resumes_exactly(tiny_data, tmp_path, monkeypatch):
    full = train(TrainConfig(data=str(tiny_data), out=str(tmp_path / "full"), **TINY))
    # --save-period 5: a checkpoint after batch 5 (the first of epoch 2, before its accumulation
    # window of 2 batches is full), then a crash in batch 7 loses only two batches.
    calls = {"n": 0}
    original = loss_module.YoloLoss.forward

    def crash(self, outputs, targets):
        calls["n"] += 1
        if calls["n"] == 7:
            raise RuntimeError("simulated kill")
        return original(self, outputs, targets)

    monkeypatch.setattr(loss_module.YoloLoss, "forward", crash)
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(TrainConfig(data=str(tiny_data), out=str(tmp_path / "part"), save_period="5", **TINY))
    monkeypatch.setattr(loss_module.YoloLoss, "forward", original)
    state = load_training_state(tmp_path / "part" / "last.pt")
    assert (state["epoch"], state["epoch_step"], state["step"]) == (1, 1, 5)
    assert state["last_opt_step"] == 3 and any(g is not None for g in state["grads"])  # mid-accumulation
    resumed = Trainer.from_checkpoint(tmp_path / "part").fit()
    assert resumed.batches == 8 and resumed.steps == full.steps
    a, b = _weights(tmp_path / "full" / "last.pt"), _weights(tmp_path / "part" / "last.pt")
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"resumed run differs in {different[:5]}"


def test_save_period_parses_batches_and_times():
    from litedet.engine.config import parse_save_period

    assert parse_save_period("200") == (200, None)
    assert parse_save_period("5m") == (None, 300.0) and parse_save_period("90s") == (None, 90.0)
    assert parse_save_period(None) == (None, None)
    with pytest.raises(ValueError, match="save_period must be"):
        TrainConfig(save_period="soon")


def test_ctrl_c_saves_a_resumable_checkpoint_and_prints_the_resume_command(tiny_data, tmp_path, monkeypatch, capsys, request):
    import os
    import signal

    from litedet.cli import main

    # Ctrl-C as in a terminal: a background job (nohup, a CI runner) may start with SIGINT ignored
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))

    full = train(TrainConfig(data=str(tiny_data), out=str(tmp_path / "full"), **TINY))
    calls = {"n": 0}
    original = loss_module.YoloLoss.forward

    def interrupt(self, outputs, targets):
        calls["n"] += 1
        if calls["n"] == 6:  # Ctrl-C during batch 6 (epoch 2)
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, outputs, targets)

    monkeypatch.setattr(loss_module.YoloLoss, "forward", interrupt)
    run = tmp_path / "runs" / "exp"
    code = main(["train", "--data", str(tiny_data), "--model", "v5lite-e", "--epochs", "2", "--batch", "2", "--nbs", "4",
                 "--imgsz", "64", "--workers", "0", "--device", "cpu", "--cache", "--eval-interval", "2",
                 "--project", str(tmp_path / "runs"), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 130 and "Traceback" not in captured.err
    assert f"interrupted: resume with: litedet train --resume {run}" in captured.out
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    state = load_training_state(run / "last.pt")
    assert state["step"] == 6 and (run / "results.png").is_file()
    monkeypatch.setattr(loss_module.YoloLoss, "forward", original)
    # --resume takes the run's name under --project; it finishes the 8 batches
    assert main(["train", "--resume", "exp", "--project", str(tmp_path / "runs"), "--no-progress"]) == 0
    assert f"run folder: {run}" in capsys.readouterr().out
    assert load_training_state(run / "last.pt")["step"] == full.batches


def test_runs_number_themselves_and_resume_keeps_the_sidecar(tiny_data, tmp_path, capsys):
    from litedet.cli import main
    from litedet.config import ModelConfig

    weights = _checkpoint(tmp_path, names=("a", "b"), source="ncnn:test.param")
    args = ["train", "--data", str(tiny_data), "--weights", str(weights), "--epochs", "2", "--batch", "4", "--imgsz",
            "64", "--workers", "0", "--device", "cpu", "--project", str(tmp_path / "runs"), "--no-progress", "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)  # --json: stdout is the JSON alone
    assert summary["out"] == str(tmp_path / "runs" / "exp") and summary["optimizer_steps"] >= 2
    assert ModelConfig.load(tmp_path / "runs" / "exp" / "last.json").source == "ncnn:test.param"
    # a second run gets exp2; a resumed run keeps every sidecar field
    train(TrainConfig(data=str(tiny_data), weights=str(weights), out=str(tmp_path / "runs" / "exp2"), stop_after_step=5,
                      **{**TINY, "model": ""}))
    first = ModelConfig.load(tmp_path / "runs" / "exp2" / "last.json")
    Trainer.from_checkpoint(tmp_path / "runs" / "exp2").fit()
    resumed = ModelConfig.load(tmp_path / "runs" / "exp2" / "last.json")
    assert resumed.to_dict() == first.to_dict() and resumed.source == "ncnn:test.param"
    assert main(args[:-1]) == 0 and (tmp_path / "runs" / "exp3" / "last.pt").is_file()


def test_stale_temp_files_go_and_a_full_disk_is_one_line(tiny_data, tmp_path, monkeypatch, capsys):
    import errno
    import os

    import litedet.config as config_module
    from litedet.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / ".last.pt.k1l2m3.tmp").write_bytes(b"half a checkpoint")
    train(TrainConfig(data=str(tiny_data), out=str(run), stop_after_step=1, **TINY))
    assert not list(run.glob(".*.tmp"))
    # ENOSPC while writing the second epoch's last.pt: one line naming it; the first one stays
    real_fsync, writes = os.fsync, {"n": 0}

    def fsync(fd):
        if ".last.pt." in os.readlink(f"/proc/self/fd/{fd}"):
            writes["n"] += 1
            if writes["n"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(config_module.os, "fsync", fsync)
    code = main(["train", "--data", str(tiny_data), "--epochs", "2", "--batch", "4", "--imgsz", "64", "--workers", "0",
                 "--device", "cpu", "--out", str(tmp_path / "full"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1] == (f"litedet train: error: cannot write {tmp_path / 'full' / 'last.pt'}: no space left on device; "
                       f"last good checkpoint: {tmp_path / 'full' / 'last.pt'}")
    assert load_training_state(tmp_path / "full" / "last.pt")["epoch"] == 1
    assert not list((tmp_path / "full").glob(".*.tmp"))


def test_save_period_in_time_writes_mid_epoch_checkpoints(tiny_data, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = loss_module.YoloLoss.forward

    def crash(self, outputs, targets):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated kill")
        return original(self, outputs, targets)

    monkeypatch.setattr(loss_module.YoloLoss, "forward", crash)
    with pytest.raises(RuntimeError, match="simulated kill"):  # a period shorter than a batch: a save after each
        train(TrainConfig(data=str(tiny_data), out=str(tmp_path), save_period="0.001s", **TINY))
    state = load_training_state(tmp_path / "last.pt")
    assert (state["epoch"], state["epoch_step"], state["step"]) == (0, 2, 2)


@pytest.mark.parametrize("epochs, lrf", [(10, 0.01), (300, 0.2), (7, 0.5)])
def test_cosine_schedule_runs_from_1_to_lrf_along_half_a_cosine(epochs, lrf):
    """YOLOv5's one_cycle: factor 1 at the start, lrf at the end, their mean half-way, and at a
    quarter 1 + (lrf - 1) * (1 - cos(pi / 4)) / 2; never outside [lrf, 1]."""
    from litedet.engine.trainer import cosine_factor

    assert cosine_factor(0, epochs, lrf) == pytest.approx(1.0, abs=1e-12)
    assert cosine_factor(epochs, epochs, lrf) == pytest.approx(lrf, abs=1e-12)
    assert cosine_factor(epochs / 2, epochs, lrf) == pytest.approx((1 + lrf) / 2, abs=1e-12)
    quarter = 1 + (lrf - 1) * (1 - math.sqrt(0.5)) / 2
    assert cosine_factor(epochs / 4, epochs, lrf) == pytest.approx(quarter, abs=1e-12)
    factors = [cosine_factor(e, epochs, lrf) for e in range(epochs + 1)]
    assert all(b <= a for a, b in zip(factors, factors[1:])) and min(factors) >= lrf - 1e-12
