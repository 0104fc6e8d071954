"""What a checkpoint saves and a resume restores, checked directly on a Trainer (no training).

The end-to-end guarantee (a resumed run is bit-identical to an uninterrupted one) lives in
test_trainer.py and test_core_properties.py; these tests pin the pieces it rests on in a second:
every counter, the EMA, gradients pending in an accumulation window, the AMP loss scale, every
global RNG (the CUDA one included, faked on a CPU machine) and the checkpoint's format version.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from litedet.engine import trainer as trainer_module
from litedet.engine.config import TrainConfig
from litedet.engine.trainer import (CHECKPOINT_NAME, CHECKPOINT_VERSION, Trainer, _rng_state, _set_rng_state,
                                    load_training_state, save_training_state)

from conftest import TINY


def _trainer(tiny_data, out, **overrides) -> Trainer:
    trainer = Trainer(TrainConfig(data=str(tiny_data), out=str(out), **{**TINY, **overrides}))
    trainer._start_state(weight_decay=0.0)
    return trainer


@pytest.fixture
def mid_run(tiny_data, tmp_path):
    """A trainer as if stopped mid-epoch inside an accumulation window, with distinct counters."""
    trainer = _trainer(tiny_data, tmp_path / "a")
    parameters = list(trainer.model.parameters())
    generator = torch.Generator().manual_seed(0)
    for index, parameter in enumerate(parameters):
        parameter.grad = None if index % 3 == 0 else torch.randn(parameter.shape, generator=generator)
    with torch.no_grad():
        next(iter(trainer.ema.module.parameters())).add_(1.0)  # EMA weights differ from the model's
    trainer.ema.updates = 4
    trainer.last_opt_step, trainer.optimizer_steps = 5, 3
    trainer.epoch_loss_sum, trainer.epoch_images, trainer.epoch_seconds = np.array([0.1, 0.2, 0.3]), 12, 1.5
    trainer.best_fitness, trainer.best_map50 = 0.25, 0.5
    trainer.train_seconds, trainer.train_images = 9.0, 40
    return trainer


def _through_file(state, path):
    save_training_state(path, state)
    return load_training_state(path)


def test_a_restored_trainer_has_every_counter_the_grads_and_the_ema_of_the_saved_one(mid_run, tiny_data, tmp_path):
    state = _through_file(mid_run._state(epoch=1, epoch_step=3, step=7, running_seconds=0.5), tmp_path / "last.pt")
    # what a reader of last.pt finds besides the tensors
    assert state["version"] == CHECKPOINT_VERSION and state["names"] == ["a", "b"]
    fresh = _trainer(tiny_data, tmp_path / "b")
    fresh._restore(state)
    assert (fresh.start_epoch, fresh.start_epoch_step, fresh.step) == (1, 3, 7)
    assert (fresh.last_opt_step, fresh.optimizer_steps) == (5, 3)
    assert fresh.epoch_loss_sum.tolist() == [0.1, 0.2, 0.3] and fresh.epoch_images == 12
    # the running seconds of the interrupted epoch are added once, to both clocks
    assert fresh.epoch_seconds == 2.0 and fresh.train_seconds == 9.5 and fresh.train_images == 40
    assert (fresh.best_fitness, fresh.best_map50) == (0.25, 0.5)
    for (name, a), b in zip(mid_run.model.named_parameters(), fresh.model.parameters()):
        assert (a.grad is None) == (b.grad is None), name
        assert a.grad is None or torch.equal(a.grad, b.grad), name
    assert fresh.ema.updates == 4
    for (name, a), b in zip(mid_run.ema.module.state_dict().items(), fresh.ema.module.state_dict().values()):
        assert torch.equal(a, b), name
    assert fresh.messages[-1] == f"resumed from {fresh.out / CHECKPOINT_NAME}: epoch 2, batch 3, step 7"


def test_state_without_running_seconds_saves_the_clocks_as_they_are(mid_run):
    state = mid_run._state(epoch=0, epoch_step=1, step=1)
    assert (state["epoch_seconds"], state["train_seconds"]) == (1.5, 9.0)


def test_a_checkpoint_without_an_optimizer_step_count_resumes_at_zero(mid_run, tiny_data, tmp_path):
    state = mid_run._state(epoch=1, epoch_step=3, step=7)
    del state["optimizer_steps"]  # written before the count existed
    fresh = _trainer(tiny_data, tmp_path / "b")
    fresh._restore(state)
    assert fresh.optimizer_steps == 0


def test_the_amp_loss_scale_survives_a_resume(mid_run, tiny_data, tmp_path):
    mid_run.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    state = mid_run._state(epoch=1, epoch_step=3, step=7)
    fresh = _trainer(tiny_data, tmp_path / "b")
    fresh.scaler = torch.amp.GradScaler("cpu", init_scale=2.0)
    fresh._restore(state)
    assert fresh.scaler.get_scale() == 1024.0


def test_ema_on_one_side_only_is_ignored(mid_run, tiny_data, tmp_path):
    # a trainer without EMA restores a checkpoint with one ...
    without = _trainer(tiny_data, tmp_path / "b", ema=False)
    without._restore(mid_run._state(epoch=1, epoch_step=3, step=7))
    assert without.ema is None and without.step == 7
    # ... and a trainer with EMA keeps its own when the checkpoint has none
    without.last_opt_step = 5
    state = without._state(epoch=1, epoch_step=3, step=7)
    assert state["ema"] is None and state["ema_updates"] == 0
    fresh = _trainer(tiny_data, tmp_path / "c")
    before = {k: v.clone() for k, v in fresh.ema.module.state_dict().items()}
    fresh._restore(state)
    assert all(torch.equal(before[k], v) for k, v in fresh.ema.module.state_dict().items())


@pytest.mark.parametrize("version", [CHECKPOINT_VERSION + 1, None, "1", 0])
def test_a_checkpoint_of_an_unknown_format_version_is_refused_naming_the_file(mid_run, tmp_path, version):
    state = mid_run._state(epoch=0, epoch_step=1, step=1)
    if version is None:
        del state["version"]
    else:
        state["version"] = version
    path = tmp_path / "last.pt"
    save_training_state(path, state)
    with pytest.raises(ValueError, match=rf"{path}: training checkpoint format version {version!r}; .*upgrade"):
        load_training_state(path)


def test_a_missing_checkpoint_says_what_resume_takes(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"^no training checkpoint {tmp_path / 'run'}; --resume takes a run folder with last.pt$"):
        load_training_state(tmp_path / "run")


_UNPICKLED: list[str] = []


def _record(text: str) -> str:
    _UNPICKLED.append(text)
    return text


class _Payload:
    """Runs ``_record`` when unpickled: what a malicious last.pt would do with ``os.system``."""

    def __reduce__(self):
        return (_record, ("code ran",))


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path):
    path = tmp_path / "last.pt"
    torch.save({"format": "litedet-train", "version": CHECKPOINT_VERSION, "payload": _Payload()}, path)
    with pytest.raises(ValueError) as caught:
        load_training_state(path)
    assert _UNPICKLED == []
    message = str(caught.value)
    assert message.startswith(f"{path}: not a litedet training checkpoint (it holds Python objects")
    assert "\n" not in message and "weights_only=False" not in message  # no advice to run the file's code


@pytest.mark.parametrize("content", [[1, 2], {"format": "other"}, {"step": 3}])
def test_a_file_that_is_not_a_training_checkpoint_is_one_error_naming_it(tmp_path, content):
    path = tmp_path / "last.pt"
    torch.save(content, path)
    with pytest.raises(ValueError, match=rf"^{path}: not a litedet training checkpoint$"):
        load_training_state(path)


def _draws():
    return (random.random(), float(np.random.standard_normal()), np.random.random(4).tolist(), torch.rand(3).tolist())


def test_every_global_rng_continues_exactly_after_a_round_trip_through_a_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(3)
    np.random.random(3)
    np.random.standard_normal()  # odd count: numpy now holds a cached Gaussian
    _, _, position, has_gauss, cached = np.random.get_state()
    assert has_gauss == 1 and int(cached) != 1 and position not in (has_gauss, int(cached))
    path = tmp_path / "rng.pt"
    torch.save(_rng_state(), path)
    expected = _draws()
    _set_rng_state(torch.load(path, weights_only=True))
    assert _draws() == expected


class _FakeCuda:
    def __init__(self, monkeypatch, available: bool) -> None:
        self.state = [torch.tensor([7, 8, 9], dtype=torch.uint8)]
        self.set_with = None
        monkeypatch.setattr(trainer_module.torch.cuda, "is_available", lambda: available)
        monkeypatch.setattr(trainer_module.torch.cuda, "get_rng_state_all", lambda: self.state)
        monkeypatch.setattr(trainer_module.torch.cuda, "set_rng_state_all", lambda value: setattr(self, "set_with", value))


def test_the_cuda_rng_is_saved_and_restored_where_cuda_is_present(monkeypatch):
    cuda = _FakeCuda(monkeypatch, available=True)
    state = _rng_state()
    assert state["cuda"] is cuda.state
    _set_rng_state(state)
    assert cuda.set_with is cuda.state


def test_a_cpu_checkpoint_on_a_cuda_machine_and_a_cuda_checkpoint_on_a_cpu_one_resume(monkeypatch):
    cuda = _FakeCuda(monkeypatch, available=True)
    state = _rng_state()
    cpu_state = {k: v for k, v in state.items() if k != "cuda"}
    _set_rng_state(cpu_state)  # no CUDA RNG saved: the machine's is left as it is
    assert cuda.set_with is None
    cuda = _FakeCuda(monkeypatch, available=False)
    assert "cuda" not in _rng_state()
    _set_rng_state(state)  # saved on a GPU, resumed on a CPU: nothing to set
    assert cuda.set_with is None


def test_a_fresh_run_does_not_replace_a_resumable_run_and_a_folder_trains_once_at_a_time(tmp_path):
    from litedet.engine.trainer import RunFolderLock, check_run_folder

    run = tmp_path / "run"
    check_run_folder(run)  # created
    (run / CHECKPOINT_NAME).write_bytes(b"state")
    with pytest.raises(ValueError, match=rf"{run} already holds a training run \(last.pt\): resume it with "
                                         rf"`litedet train --resume {run}`"):
        check_run_folder(run)
    check_run_folder(run, resuming=True)
    with RunFolderLock(run):
        with pytest.raises(ValueError, match=rf"{run} is in use by another litedet train \(pid {__import__('os').getpid()}\)"):
            with RunFolderLock(run):
                pass
    with RunFolderLock(run):  # released at the end of the first
        pass
