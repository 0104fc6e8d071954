"""Every verb behaves alike: help and defaults on every option, the shared options (--model from
the sidecar, --no-progress, --json, --project/--name/--exist-ok), run folders, `litedet --version`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from litedet.cli import VERBS, build_parser, main
from litedet.cli.common import find_run, increment_path, resolve_model

SHARED_OPTIONS = {"--no-progress", "--json"}


def _parsers(parser: argparse.ArgumentParser, path: str):
    """(name, parser) for a verb's parser and every nested sub-command parser."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def _verb_parsers():
    for verb in VERBS:
        parser = build_parser(verb)
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        yield from _parsers(sub.choices[verb], verb)


def _has_default(action: argparse.Action) -> bool:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._HelpAction,
                           argparse._VersionAction, argparse._SubParsersAction)):
        return False
    return action.default not in (None, False, argparse.SUPPRESS, [], "")


def test_every_option_of_every_verb_has_help_and_shows_its_default():
    missing_help, missing_default = [], []
    for path, parser in _verb_parsers():
        for action in parser._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            name = f"{path} {action.option_strings[-1]}"
            if not action.help or action.help == argparse.SUPPRESS:
                missing_help.append(name)
            elif _has_default(action) and "default" not in action.help.lower():
                missing_default.append(f"{name} (default {action.default!r})")
    assert not missing_help, f"options without help: {missing_help}"
    assert not missing_default, f"options whose help does not show the default: {missing_default}"


def test_every_verb_takes_no_progress_and_json():
    lacking = []
    for path, parser in _verb_parsers():
        if any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
            continue  # the sub-commands carry them
        options = {s for a in parser._actions for s in a.option_strings}
        if path.startswith("detect"):
            continue  # detect's options belong to its own module
        lacking += [f"{path} {o}" for o in SHARED_OPTIONS - options]
    assert not lacking, lacking


def test_model_is_optional_wherever_weights_are_taken():
    for path, parser in _verb_parsers():
        options = {s: a for a in parser._actions for s in a.option_strings}
        if "--weights" in options and "--model" in options:
            assert not options["--model"].required, path


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    from litedet import __version__

    assert capsys.readouterr().out.strip() == f"litedet {__version__}"


def test_increment_path_numbers_taken_names(tmp_path):
    assert increment_path(tmp_path / "exp") == tmp_path / "exp"
    (tmp_path / "exp").mkdir()
    assert increment_path(tmp_path / "exp") == tmp_path / "exp2"
    (tmp_path / "exp2").mkdir()
    assert increment_path(tmp_path / "exp") == tmp_path / "exp3"
    assert increment_path(tmp_path / "exp", exist_ok=True) == tmp_path / "exp"


def test_resolve_model_reads_the_sidecar_and_rejects_a_mismatch(tmp_path):
    from litedet.config import ModelConfig

    weights = tmp_path / "w.onnx"
    weights.write_bytes(b"")
    ModelConfig("v5lite-s", 2, ["a", "b"], (64, 64)).save(tmp_path / "w.json")
    assert resolve_model(weights, None) == "v5lite-s"
    assert resolve_model(weights, "v5lite-s") == "v5lite-s"
    with pytest.raises(ValueError, match="--model v5lite-e does not match .*says v5lite-s"):
        resolve_model(weights, "v5lite-e")
    assert resolve_model(tmp_path / "no_sidecar.onnx", "v5lite-e") == "v5lite-e"


def test_quantize_takes_model_and_a_mismatch_is_one_line(tmp_path, capsys):
    from litedet.config import ModelConfig

    weights = tmp_path / "m.onnx"
    weights.write_bytes(b"not read")
    ModelConfig("v5lite-s", 2, ["a", "b"], (64, 64)).save(tmp_path / "m.json")
    code = main(["quantize", "--weights", str(weights), "--model", "v5lite-e", "--no-report", "-o", str(tmp_path / "q")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "does not match" in err and "v5lite-s" in err


def test_find_run_takes_a_folder_or_a_run_name(tmp_path):
    (tmp_path / "exp2").mkdir()
    (tmp_path / "exp2" / "last.pt").write_bytes(b"")
    assert find_run(str(tmp_path / "exp2"), "elsewhere") == tmp_path / "exp2"
    assert find_run("exp2", str(tmp_path)) == tmp_path / "exp2"
    with pytest.raises(FileNotFoundError, match="runs in .*: exp2"):
        find_run("exp9", str(tmp_path))


def test_models_json_is_the_only_stdout(capsys):
    pytest.importorskip("torch")
    assert main(["models", "--filter", "v5lite-e", "--kind", "detector", "--json", "--no-progress"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in rows] == ["v5lite-e"]


def test_stream_keeps_progress_as_a_deprecated_alias():
    parser = build_parser("stream")
    args = parser.parse_args(["stream", "--source", "v.mp4", "--weights", "m.onnx", "--progress"])
    assert args.progress and not args.no_progress
    args = parser.parse_args(["stream", "--source", "v.mp4", "--weights", "m.onnx", "--no-progress"])
    assert args.no_progress


def test_compress_verbs_number_their_run_folders(tmp_path):
    from litedet.cli.common import run_folder

    parser = build_parser("prune")
    args = parser.parse_args(["prune", "--weights", "w.safetensors", "--ratio", "0.3", "--project", str(tmp_path)])
    assert run_folder(args, args.output) == tmp_path / "prune"
    (tmp_path / "prune").mkdir()
    assert run_folder(args, args.output) == tmp_path / "prune2"
    args = parser.parse_args(["prune", "--weights", "w.safetensors", "--ratio", "0.3", "-o", str(tmp_path / "x")])
    assert run_folder(args, args.output) == Path(tmp_path / "x")


def test_native_logs_are_quiet_unless_the_environment_asks(monkeypatch, capsys):
    from litedet.cli import QUIET_NATIVE_LOGS

    monkeypatch.delenv("OPENCV_FFMPEG_LOGLEVEL", raising=False)
    monkeypatch.setenv("OPENCV_LOG_LEVEL", "DEBUG")  # someone debugging a camera keeps OpenCV's log
    assert main([]) == 0
    import os

    assert os.environ["OPENCV_FFMPEG_LOGLEVEL"] == QUIET_NATIVE_LOGS["OPENCV_FFMPEG_LOGLEVEL"] == "-8"
    assert os.environ["OPENCV_LOG_LEVEL"] == "DEBUG"
