"""`litedet models`: the JSON list and the Markdown table, through the CLI dispatcher."""

from __future__ import annotations

import json

import pytest

from litedet.cli import main
from litedet.models.registry import list_models


def _json_rows(capsys, *argv: str) -> list[dict]:
    assert main(["models", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_models_json_lists_counts(capsys) -> None:
    rows = _json_rows(capsys, "--filter", "mobilenetv1_x0_2*", "--input", "160")
    assert [row["name"] for row in rows] == ["mobilenetv1_x0_25"]
    row = rows[0]
    assert {"name", "params", "madds", "mac", "input_size"} <= set(row)
    assert row["input_size"] == [160, 160] and row["kind"] == "backbone"
    assert row["params"] == 470072  # 0.47M (MobileNetV1 Table 6 prints 0.5M)
    assert row["flops"] == 2 * row["madds"]
    # madds scale with the pixel count for a fully convolutional body (the fc is 256 x 1000).
    at_224 = _json_rows(capsys, "--filter", "mobilenetv1_x0_25")[0]
    assert at_224["input_size"] == [224, 224]
    fc = 256 * 1000
    assert (at_224["madds"] - fc) * 160**2 == pytest.approx((row["madds"] - fc) * 224**2, rel=1e-3)
    assert abs(at_224["madds"] - 41e6) <= 0.02 * 41e6


def test_models_table_text(capsys) -> None:
    assert main(["models", "--filter", "shufflenetv2_x0_5", "--input", "64"]) == 0
    out = capsys.readouterr().out
    assert "FLOPs = 2 x multiply-adds" in out
    assert "| shufflenetv2_x0_5 | backbone | 64x64 | 1.367 |" in out
    assert "peak activations (MiB, fp32)" in out


def test_detectors_counted_at_their_own_size(capsys) -> None:
    detectors = list_models("v5lite-e", kind="detector")
    if not detectors:
        pytest.skip("the detector zoo (litedet.models.zoo) registers no v5lite-e here")
    row = _json_rows(capsys, "--filter", "v5lite-e")[0]
    assert row["kind"] == "detector" and row["input_size"] == [320, 320]
    assert row["params"] > 0 and row["mac"] > row["params"]


@pytest.mark.parametrize("argv, message", [(["--filter", "nothing-like-this"], "no registered model"),
                                           (["--input", "0"], "--input must be > 0, got 0")])
def test_models_cli_bad_arguments(capsys, argv: list[str], message: str) -> None:
    assert main(["models", *argv]) == 2
    assert message in capsys.readouterr().err
