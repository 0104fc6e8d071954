"""Mutation testing of litedet's core: does the suite fail when the code is subtly wrong?

Two parts, both run by ``make mutation`` (docs/development.md explains how to read the report):

1. **mutmut** over the functions that matter in each core module (``MODULES``). Each module runs
   in its own work folder ``runs/mutation/<module>/`` (a copy of the tree whose ``[tool.mutmut]``
   names only that module's files and its own test files), so mutant generation and mutmut's
   test-coverage pass stay small; mutmut then runs each mutant against only the tests that
   execute the mutated function, fastest test first (``mutation_plugins/``), so most mutants
   cost one quick test. The results stay there for ``--recheck`` and ``--report-only``.
   ``[tool.mutmut]`` in pyproject.toml is the same set for a plain ``mutmut run`` over everything.
2. **Bug classes** (``BUG_CLASSES``): hand-written mutants for the silent bugs that once survived
   the suite, several of them in code mutmut cannot mutate (it skips decorated functions such as
   ``@torch.no_grad()`` ones and ``@property``). Each is applied to a scratch copy of the tree
   and the default suite's tests for it must fail.

The survivors report (Markdown) goes to ``runs/mutation/survivors.md`` (git-ignored); the exit
status is 1 when the mutmut score falls below ``--floor`` percent (default 90) or a bug class
survives. Mutants listed in ``scripts/mutation_equivalent.txt`` (``function | mutated line  #
reason``) are equivalent to the original and are not counted.

    python scripts/mutation.py                      # everything (slow: see docs/development.md)
    python scripts/mutation.py --modules ops,loss   # some modules
    python scripts/mutation.py --bug-classes-only   # the hand-written bug classes (minutes)
    python scripts/mutation.py --modules ops --recheck  # only last run's survivors, after new tests
                                                        # (after a code change, run the module in full)
    python scripts/mutation.py --report-only        # rewrite the report from the last run
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EQUIVALENT_FILE = REPO / "scripts" / "mutation_equivalent.txt"
DEFAULT_REPORT = REPO / "runs" / "mutation" / "survivors.md"
PLUGINS = REPO / "scripts" / "mutation_plugins"
# mutmut's CPU-time limit per mutant is (test seconds + TIMEOUT_CONSTANT) x TIMEOUT_MULTIPLIER x 2;
# the test seconds leave out pytest's start-up (importing torch), hence the constant
TIMEOUT_MULTIPLIER = 2.0
TIMEOUT_CONSTANT = 5.0

# The functions that matter per module, as mutmut mutant-name globs (``x_<function>`` for a
# function, ``xǁ<Class>ǁ<method>`` for a method). Plot/CLI glue and slow end-to-end paths
# (``Trainer.fit``, the ORT/NNCF quantize drivers) are left to the bug classes below, which
# cover their silent-failure modes at a fraction of the cost.
@dataclass(frozen=True)
class Module:
    """Files mutmut mutates, the test files it runs against them, and the mutant-name globs
    (``x_<function>`` for a function, ``xǁ<Class>ǁ<method>`` for a method) that are checked."""

    files: tuple[str, ...]
    tests: tuple[str, ...]
    patterns: tuple[str, ...]
    deselect: tuple[str, ...] = ()  # slow tests of those files that add no kill (pytest --deselect)


CORE = "tests/test_core_properties.py"
MODULES: dict[str, Module] = {
    "ops": Module(("litedet/ops/*.py",), (f"{CORE}::test_per_class_nms_keeps_overlapping_boxes_of_different_classes_at_4k", f"{CORE}::test_nms_threshold_is_inclusive_of_the_iou_bound", f"{CORE}::test_nms_defaults_are_yolov5s", f"{CORE}::test_per_class_nms_on_a_4k_image_equals_nms_run_per_class", f"{CORE}::test_identical_boxes_of_different_classes_never_touch_after_the_class_offset",
                   f"{CORE}::test_zero_area_boxes_do_not_suppress_each_other", f"{CORE}::test_nms_rejects_mismatched_or_out_of_range_input",
                   f"{CORE}::test_max_nms_keeps_the_best_candidates", "tests/test_ops.py", "tests/test_ops_contracts.py"),
                  ("litedet.ops.nms.*", "litedet.ops.boxes.x_box_iou__*", "litedet.ops.boxes.x_box_area__*",
                   "litedet.ops.boxes.x_xywh_to_xyxy__*", "litedet.ops.boxes.x_xyxy_to_xywh__*",
                   "litedet.ops.boxes.x_scale_boxes__*", "litedet.ops.boxes.x_clip_boxes__*",
                   "litedet.ops.decode.x_decode_yolo__*", "litedet.ops.decode.x_sigmoid__*")),
    "transforms": Module(("litedet/data/transforms.py",), ("tests/test_ops.py", "tests/test_augment.py", "tests/test_transforms.py"),
                         ("litedet.data.transforms.x_letterbox__*", "litedet.data.transforms.x_stretch__*",
                          "litedet.data.transforms.x_to_tensor__*")),
    "datasets": Module(("litedet/data/datasets.py",), (f"{CORE}::test_yolo_label_class_ids_must_be_in_range", f"{CORE}::test_label_boxes_are_clipped_and_degenerate_ones_dropped_with_counts",
                                                       f"{CORE}::test_yolo_label_path_replaces_the_last_images_folder", f"{CORE}::test_class_names_as_list_or_mapping",
                                                       f"{CORE}::test_bad_class_names_are_one_line_errors", "tests/test_datasets.py",
                                                       "tests/test_label_contracts.py"),
                       ("litedet.data.datasets.x_read_yolo_labels__*", "litedet.data.datasets.x__check_boxes__*",
                        "litedet.data.datasets.x_yolo_label_path__*", "litedet.data.datasets.x__parse_names__*")),
    "loss": Module(("litedet/engine/loss.py",), (f"{CORE}::test_loss_targets_cover_the_neighbouring_cells", f"{CORE}::test_loss_anchor_ratio_test_and_positive_objectness", f"{CORE}::test_loss_value_matches_the_yolov5_formulas_written_out", f"{CORE}::test_loss_config_allows_zero_gains_and_names_a_negative_one",
                   f"{CORE}::test_loss_config_label_smoothing_range", "tests/test_loss.py"),
                   ("litedet.engine.loss.xǁYoloLossǁforward__*", "litedet.engine.loss.xǁLossConfigǁ__post_init____*",
                    "litedet.engine.loss.x__xywh_to_xyxy__*")),
    "conv": Module(("litedet/layers/conv.py",), (f"{CORE}::test_fused_conv_equals_conv_then_bn_with_a_tiny_running_variance", f"{CORE}::test_fuse_model_keeps_the_eval_outputs_of_a_detector", f"{CORE}::test_folded_detector_computes_the_random_bn_detector_function", f"{CORE}::test_fuse_model_leaves_batchnorms_without_running_statistics",
                                                 f"{CORE}::test_identity_batchnorm_is_recognised_exactly", f"{CORE}::test_make_divisible_rounds_to_the_nearest_multiple_without_losing_ten_percent",
                                                 "tests/test_detector.py", "tests/test_backbones.py", "tests/test_fuse.py"),
                   ("litedet.layers.conv.x_fuse_model__*", "litedet.layers.conv.x_is_identity_batchnorm__*",
                    "litedet.layers.conv.x_make_divisible__*")),
    "ncnn_import": Module(("litedet/models/ncnn_import.py",), ("tests/test_import.py", "tests/test_ncnn_reader.py"),
                          ("litedet.models.ncnn_import.x_read_ncnn_param__*", "litedet.models.ncnn_import.x__parse_value__*",
                           "litedet.models.ncnn_import.xǁ_BinReaderǁ*", "litedet.models.ncnn_import.x__conv_bn_pairs__*")),
    "quantize": Module(("litedet/compress/quantize.py",), (f"{CORE}::test_int8_calibrated_on_real_images_keeps_outputs_on_held_out_real_images", f"{CORE}::test_calibration_batches_are_the_backend_preprocessing", f"{CORE}::test_openvino_accuracy_control_passes_max_drop_and_the_map_metric",
                                                         "tests/test_quantize_speed.py", "tests/test_compress.py", "tests/test_quantize_contracts.py"),
                       ("litedet.compress.quantize.x_calibration_images__*", "litedet.compress.quantize.x_calibration_batches__*",
                        "litedet.compress.quantize.x_rewrite_for_int8__*", "litedet.compress.quantize.x__is_depthwise__*",
                        "litedet.compress.quantize.x__pad_axis__*", "litedet.compress.quantize.x_quantize__*"),
                       # 30 s of QAT training per surviving mutant; the rewrites it also runs are
                       # checked by test_static_int8_with_and_without_rewrites in seconds
                       ("tests/test_quantize_speed.py::test_qat_fast_export_uses_learned_ranges_and_rewrites",)),
    "trainer": Module(("litedet/engine/trainer.py",), (f"{CORE}::test_resume_in_the_middle_of_an_accumulation_window_is_bit_identical",
                                                       "tests/test_trainer_state.py", "tests/test_trainer.py"),
                      ("litedet.engine.trainer.xǁTrainerǁ_state__*", "litedet.engine.trainer.xǁTrainerǁ_restore__*",
                       "litedet.engine.trainer.x__rng_state__*", "litedet.engine.trainer.x__set_rng_state__*",
                       "litedet.engine.trainer.x_cosine_factor__*", "litedet.engine.trainer.x_load_training_state__*"),
                      # 10-15 s of training each per surviving mutant; they check run folders, Ctrl-C
                      # and save periods, not the state itself (test_trainer_state.py and the two
                      # bit-identical resume tests do)
                      tuple(f"tests/test_trainer.py::{name}" for name in (
                          "test_runs_number_themselves_and_resume_keeps_the_sidecar",
                          "test_ctrl_c_saves_a_resumable_checkpoint_and_prints_the_resume_command",
                          "test_save_period_mid_epoch_and_mid_accumulation_resumes_exactly",
                          "test_stale_temp_files_go_and_a_full_disk_is_one_line"))),
    "harness": Module(("litedet/bench/harness.py",), (f"{CORE}::test_other_load_is_busy_minus_own_over_wall_times_cpus", f"{CORE}::test_other_load_is_none_when_unreadable_and_clamped", f"{CORE}::test_cpu_snapshot_from_psutil_counts_busy_time_without_idle_iowait_steal_and_guest", f"{CORE}::test_cpu_snapshot_from_proc_stat_without_psutil",
                                                      f"{CORE}::test_throughput_is_images_per_second_at_the_median", f"{CORE}::test_summarize_statistics_in_milliseconds",
                                                      f"{CORE}::test_summarize_edge_cases_and_messages", f"{CORE}::test_measurement_counts_are_checked", f"{CORE}::test_the_least_disturbed_attempt_is_kept",
                                                      f"{CORE}::test_load_monitor_edge_cases", f"{CORE}::test_cpu_snapshot_without_iowait_and_steal_fields",
                                                      f"{CORE}::test_cpu_snapshot_from_an_old_proc_stat_and_an_unreadable_one",
                                                      "tests/test_bench.py"),
                      ("litedet.bench.harness.x_summarize__*", "litedet.bench.harness.x__read_cpu__*",
                       "litedet.bench.harness.xǁLoadMonitorǁ*", "litedet.bench.harness.x__less_disturbed__*",
                       "litedet.bench.harness.x__check_counts__*", "litedet.bench.harness.x_throughput__*")),
}


@dataclass(frozen=True)
class BugClass:
    """A hand-written mutant: ``old`` (exactly once in ``path``) becomes ``new``; ``tests``
    (default suite) must then fail."""

    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


BUG_CLASSES = [
    BugClass("per-class NMS: a fixed class offset of a few hundred pixels", "litedet/ops/nms.py",
             "reshape(-1, 1) * class_offset(boxes)", "reshape(-1, 1) * 512.0",
             (f"{CORE}::test_per_class_nms_keeps_overlapping_boxes_of_different_classes_at_4k",
              f"{CORE}::test_per_class_nms_on_a_4k_image_equals_nms_run_per_class")),
    BugClass("loss targets: neighbour cell when the centre is in the far half", "litedet/engine/loss.py",
             "left, up = ((centre % 1 < 0.5)", "left, up = ((centre % 1 > 0.5)",
             (f"{CORE}::test_loss_targets_cover_the_neighbouring_cells",)),
    BugClass("resume: the pending accumulated gradients dropped", "litedet/engine/trainer.py",
             "parameter.grad = None if grad is None else grad.to(parameter.device)", "parameter.grad = None",
             (f"{CORE}::test_resume_in_the_middle_of_an_accumulation_window_is_bit_identical",)),
    BugClass("Conv+BN folding without the BN epsilon", "litedet/layers/conv.py",
             "torch.sqrt(bn.running_var + bn.eps)", "torch.sqrt(bn.running_var + 1e-5)",
             (f"{CORE}::test_fused_conv_equals_conv_then_bn_with_a_tiny_running_variance",)),
    BugClass("INT8: calibration images at twice the model's input scale", "litedet/compress/quantize.py",
             "        yield batch\n", "        yield batch * 2.0\n",
             (f"{CORE}::test_int8_calibrated_on_real_images_keeps_outputs_on_held_out_real_images",
              f"{CORE}::test_calibration_batches_are_the_backend_preprocessing")),
    BugClass("NNCF accuracy control ignoring max_drop", "litedet/compress/quantize.py",
             "max_drop=max_drop, drop_type", "max_drop=0.01, drop_type",
             (f"{CORE}::test_openvino_accuracy_control_passes_max_drop_and_the_map_metric",)),
    BugClass("labels: a negative class id accepted", "litedet/data/datasets.py",
             "not 0 <= cls < num_classes", "not cls < num_classes",
             (f"{CORE}::test_yolo_label_class_ids_must_be_in_range",)),
    BugClass("bench: other-process load counts this process too", "litedet/bench/harness.py",
             "share = (self._busy - self._own)", "share = (self._busy)",
             (f"{CORE}::test_other_load_is_busy_minus_own_over_wall_times_cpus",)),
    BugClass("bench: other-process load not divided by the CPU count", "litedet/bench/harness.py",
             "(self._busy - self._own) / (self._wall * self.cpus)", "(self._busy - self._own) / (self._wall)",
             (f"{CORE}::test_other_load_is_busy_minus_own_over_wall_times_cpus",)),
]


# ------------------------------------------------------------------------------------ mutmut

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout",
          -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", None: "not checked", 37: "killed"}


def _env() -> dict[str, str]:
    # Tests find ../shared relative to the repo; mutmut and the scratch copy run elsewhere.
    # One BLAS/OpenMP thread per mutant: mutants already run in parallel (--max-children).
    # PYTHONPATH: the plugin that runs a mutant's tests fastest first (mutation_plugins/).
    path = os.pathsep.join(p for p in (str(PLUGINS), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "LITEDET_SHARED": os.environ.get("LITEDET_SHARED", str(REPO.parent / "shared")),
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": path}


def _mutmut() -> list[str]:
    exe = Path(sys.executable).with_name("mutmut")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "mutmut"]


def workdir(module: str) -> Path:
    return REPO / "runs" / "mutation" / module


def prepare_workdir(name: str, module: Module) -> Path:
    """Copy the tree into the module's work folder with a ``[tool.mutmut]`` for this module only."""
    folder = workdir(name)
    folder.mkdir(parents=True, exist_ok=True)
    for part in ("litedet", "tests", "configs"):
        if (REPO / part).is_dir():
            shutil.copytree(REPO / part, folder / part, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pyproject = (REPO / "pyproject.toml").read_text()
    pyproject = pyproject.split("\n[tool.mutmut]")[0].rstrip("\n")
    quoted = lambda items: "[" + ", ".join(json.dumps(i) for i in items) + "]"  # noqa: E731
    pyproject += (f"\n\n[tool.mutmut]\nsource_paths = [\"litedet/\"]\nonly_mutate = {quoted(module.files)}\n"
                  f"pytest_add_cli_args_test_selection = {quoted(module.tests)}\n"
                  f"pytest_add_cli_args = {quoted(['-p', 'no:cacheprovider', '-p', 'litedet_mutation_order', *(a for t in module.deselect for a in ('--deselect', t))])}\n"
                  f"process_isolation = \"forkserver\"\n"
                  # tests read the shipped configs (data and experiment YAMLs) next to the package
                  f"also_copy = [\"configs\"]\n"
                  # a mutant is a timeout after 2x its tests' wall time + 10 s (4x + 20 s CPU; mutmut: 30x):
                  # endless loops (mutants of the .bin reader) otherwise cost minutes each
                  f"timeout_multiplier = {TIMEOUT_MULTIPLIER}\ntimeout_constant = {TIMEOUT_CONSTANT}\n")
    (folder / "pyproject.toml").write_text(pyproject)
    return folder


def recheck_names(name: str, module: Module) -> list[str]:
    """The mutants of ``name`` that the last run left alive (survived, no tests, suspicious) or
    did not check: after new tests, only these need running again (adding tests cannot revive a
    killed mutant)."""
    results = load_results(name)
    return sorted(n for n, code in results.items() if _matches(n, list(module.patterns))
                  and STATUS.get(code, "suspicious") in ("survived", "no tests", "suspicious", "not checked"))


def run_mutmut(name: str, module: Module, max_children: int, recheck: bool = False) -> int:
    """mutmut on the module's functions in its work folder: every mutant of them (mutmut re-runs
    all mutants it is given by name), or with ``recheck`` only those the last run left alive or
    unchecked, against the tests written since (after a code change, run without it)."""
    alive = recheck_names(name, module) if recheck else []
    if recheck and not alive:
        print(f"mutmut {name}: nothing left alive by the last run", flush=True)
        return 0
    folder = prepare_workdir(name, module)
    targets = alive if recheck else list(module.patterns)
    command = ["nice", "-n", "15", *_mutmut(), "run", "--max-children", str(max_children), *targets]
    shown = command if len(targets) < 12 else [*command[:-len(targets)], f"<{len(targets)} mutants left alive>"]
    print(f"$ (cd {folder.relative_to(REPO)} && {' '.join(shown)})", flush=True)
    with (folder / "mutmut.log").open("w") as handle:
        return subprocess.call(command, cwd=folder, env=_env(), stdout=handle, stderr=subprocess.STDOUT)


def load_results(name: str) -> dict[str, int | None]:
    """Mutant name -> mutmut exit code, from the ``mutants/**/*.meta`` files of the module's runs."""
    results: dict[str, int | None] = {}
    for meta in (workdir(name) / "mutants").rglob("*.py.meta"):
        results.update(json.loads(meta.read_text())["exit_code_by_key"])
    return results


def _matches(name: str, patterns: list[str]) -> bool:
    from fnmatch import fnmatchcase

    return any(fnmatchcase(name, p) for p in patterns)


def mutant_diff(folder: Path, name: str, _cache: dict = {}) -> str:
    """The lines a mutant changes (``-old`` / ``+new``), from the mutated copy mutmut wrote."""
    module, function = name.rsplit("__mutmut_", 1)[0].rsplit(".", 1)
    path = folder / "mutants" / (module.replace(".", "/") + ".py")
    if path not in _cache:
        source = path.read_text()
        lines = source.splitlines()
        # whole lines by line numbers (ast.get_source_segment re-splits the file on every call,
        # far too slow for a mutated file of thousands of functions); methods sit in class bodies
        functions = {}
        for node in ast.parse(source).body:
            for item in (node.body if isinstance(node, ast.ClassDef) else [node]):
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    functions[item.name] = "\n".join(lines[item.lineno - 1:item.end_lineno])
        _cache[path] = functions
    functions = _cache[path]
    mutated_name = name.rsplit(".", 1)[1]
    original, mutated = functions.get(function + "__mutmut_orig"), functions.get(mutated_name)
    if original is None or mutated is None:
        return "(source not found)"
    original = original.replace(function + "__mutmut_orig", function, 1)
    mutated = mutated.replace(mutated_name, function, 1)
    lines = [line for line in difflib.unified_diff(original.splitlines(), mutated.splitlines(), lineterm="", n=0)
             if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    return "\n".join(line[0] + line[1:].strip() for line in lines)


def load_equivalent() -> dict[str, str]:
    """``function | mutated line  # reason`` -> reason. Keyed by content, not by mutant number,
    so an entry survives renumbering and goes stale (unused) when the code changes."""
    equivalent = {}
    if EQUIVALENT_FILE.is_file():
        for number, line in enumerate(EQUIVALENT_FILE.read_text().splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            key, _, reason = line.rpartition("  # ")  # the last one: a mutated line may hold a comment
            if "|" not in key or not reason.strip():
                raise SystemExit(f"{EQUIVALENT_FILE}:{number}: expected 'function | +mutated line  # reason'")
            equivalent[key.strip()] = reason.strip()
    return equivalent


def equivalence_key(name: str, diff: str) -> str:
    function = name.rsplit("__mutmut_", 1)[0]
    added = [line for line in diff.splitlines() if line.startswith("+")]
    return f"{function} | {added[0] if added else diff.splitlines()[0] if diff else ''}"


# --------------------------------------------------------------------------------- bug classes


def _scratch_copy(target: Path) -> None:
    ignore = shutil.ignore_patterns(".venv", ".git", "mutants", "runs", "__pycache__", "*.egg-info", ".cache",
                                    ".pytest_cache", "docs", "site")
    shutil.copytree(REPO, target, ignore=ignore, dirs_exist_ok=True)


def run_bug_class(bug: BugClass, scratch: Path) -> tuple[str, float]:
    """'killed', 'SURVIVED' or 'stale' (the code it mutates changed), and seconds taken."""
    original = (REPO / bug.path).read_text()
    if original.count(bug.old) != 1:
        return "stale", 0.0
    target = scratch / bug.path
    target.write_text(original.replace(bug.old, bug.new))
    started = time.perf_counter()
    try:
        # -p no:cacheprovider: the scratch copy is thrown away; cwd first on sys.path, so the
        # mutated litedet/ shadows the editable install.
        code = subprocess.call(["nice", "-n", "15", sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                                *bug.tests], cwd=scratch, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        target.write_text(original)
    return ("killed" if code == 1 else "SURVIVED" if code == 0 else f"error (pytest exit {code})"), time.perf_counter() - started


# -------------------------------------------------------------------------------------- report


def write_report(path: Path, modules: list[str], bugs: list[tuple[BugClass, str, float]],
                 floor: float, seconds: float) -> tuple[float | None, bool]:
    equivalent = load_equivalent()
    used_equivalent: set[str] = set()
    rows, survivors = [], []
    total = Counter()
    for module in modules:
        results = load_results(module)
        names = sorted(n for n in results if _matches(n, list(MODULES[module].patterns)))
        counts = Counter()
        for name in names:
            status = STATUS.get(results[name], "suspicious")
            if status in ("survived", "no tests", "suspicious"):
                diff = mutant_diff(workdir(module), name)
                key = equivalence_key(name, diff)
                if key in equivalent:
                    used_equivalent.add(key)
                    status = "equivalent"
                else:
                    survivors.append((module, name, status, diff))
            counts[status] += 1
        total.update(counts)
        rows.append((module, counts))

    def score(counts: Counter) -> float | None:
        tested = sum(counts[s] for s in ("killed", "timeout", "survived", "no tests", "suspicious"))
        return None if tested == 0 else 100.0 * (counts["killed"] + counts["timeout"]) / tested

    overall = score(total)
    lines = ["# Mutation testing: survivors report", "",
             (f"`python scripts/mutation.py` in {seconds / 60:.1f} min" if seconds >= 1 else
              "`python scripts/mutation.py --report-only`: the results of the last runs")
             + f"; floor {floor:.0f} % of non-equivalent mutants killed.",
             "Score = (killed + timeout) / (killed + timeout + survived + no tests + suspicious); equivalent "
             "mutants (scripts/mutation_equivalent.txt) and unchecked ones are not counted.", "",
             "| module | mutants | killed | timeout | survived | no tests | equivalent | not checked | score |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for module, counts in rows + [("**all**", total)]:
        value = score(counts)
        lines.append(f"| {module} | {sum(counts.values())} | {counts['killed']} | {counts['timeout']} | {counts['survived']} | "
                     f"{counts['no tests']} | {counts['equivalent']} | {counts['not checked']} | "
                     f"{'-' if value is None else f'{value:.1f} %'} |")
    bugs_ok = all(status == "killed" for _, status, _ in bugs)
    if bugs:
        lines += ["", "## Bug classes (hand-written mutants; each must fail the default suite)", "",
                  "| bug class | file | result | seconds |", "| --- | --- | --- | ---: |"]
        lines += [f"| {bug.name} | `{bug.path}` | {status} | {took:.0f} |" for bug, status, took in bugs]
    lines += ["", f"## Survivors ({len(survivors)})", "",
              "Each: the mutant's name (`mutmut show NAME` in `runs/mutation/MODULE/` prints it), then the "
              "changed line. Kill it with a test of the property it breaks, or, when "
              "it cannot change behaviour, add `function | +mutated line  # reason` to scripts/mutation_equivalent.txt.", ""]
    for module, name, status, diff in survivors:
        lines += [f"- `{name}` ({module}, {status})", "  ```diff", *("  " + d for d in diff.splitlines()), "  ```"]
    stale = sorted(set(equivalent) - used_equivalent)
    if stale and modules:
        lines += ["", "## Equivalent entries that matched no mutant this run (stale, or module not run)", ""]
        lines += [f"- `{key}`" for key in stale]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return overall, bugs_ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modules", default=",".join(MODULES), help=f"comma-separated, from {', '.join(MODULES)}")
    parser.add_argument("--floor", type=float, default=90.0, help="minimum mutation score in percent (default 90)")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 1, help="parallel mutants (default: CPUs)")
    parser.add_argument("--report", type=Path, default=DEFAULT_REPORT, help=f"Markdown report (default {DEFAULT_REPORT.relative_to(REPO)})")
    parser.add_argument("--bug-classes-only", action="store_true", help="only the hand-written bug classes")
    parser.add_argument("--no-bug-classes", action="store_true", help="skip the hand-written bug classes")
    parser.add_argument("--bug-class", default="", metavar="TEXT", help="only the bug classes whose name contains TEXT (comma-separated: any of them)")
    parser.add_argument("--recheck", action="store_true",
                        help="re-run only the mutants the last run left alive or unchecked (after writing tests for them)")
    parser.add_argument("--report-only", action="store_true", help="no runs: report the results of the last runs")
    args = parser.parse_args(argv)
    modules = [m.strip() for m in args.modules.split(",") if m.strip()]
    unknown = sorted(set(modules) - set(MODULES))
    if unknown:
        parser.error(f"unknown module(s) {unknown}; choose from {list(MODULES)}")
    started = time.perf_counter()
    if args.bug_classes_only:
        modules = []
    bugs: list[tuple[BugClass, str, float]] = []
    if not args.report_only and not args.no_bug_classes:
        with tempfile.TemporaryDirectory(prefix="litedet-mutation-") as tmp:
            _scratch_copy(Path(tmp))
            # The tests must pass on the unmutated code, or every "killed" below means nothing.
            wanted = [text.strip() for text in args.bug_class.split(",")]
            chosen = [bug for bug in BUG_CLASSES if any(text in bug.name for text in wanted)]
            baseline = sorted({test for bug in chosen for test in bug.tests})
            code = subprocess.call(["nice", "-n", "15", sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                    *baseline], cwd=tmp, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if code != 0:
                print(f"the bug-class tests fail on the unmutated tree (pytest exit {code}): "
                      f"run pytest {' '.join(baseline)}", file=sys.stderr)
                return 1
            for bug in chosen:
                status, took = run_bug_class(bug, Path(tmp))
                print(f"bug class {status:>8}  {took:5.0f} s  {bug.name}", flush=True)
                bugs.append((bug, status, took))
    bug_file = REPO / "runs" / "mutation" / "bug_classes.json"
    if bugs:  # kept, so that --report-only shows them too
        bug_file.parent.mkdir(parents=True, exist_ok=True)
        bug_file.write_text(json.dumps([{"name": b.name, "status": st, "seconds": round(t, 1)} for b, st, t in bugs], indent=1))
    elif args.report_only and bug_file.is_file():
        by_name = {bug.name: bug for bug in BUG_CLASSES}
        bugs = [(by_name[row["name"]], row["status"], row["seconds"]) for row in json.loads(bug_file.read_text())
                if row["name"] in by_name]
    if not args.report_only:
        for module in modules:
            began = time.perf_counter()
            code = run_mutmut(module, MODULES[module], args.max_children, args.recheck)
            print(f"mutmut {module}: exit {code} in {time.perf_counter() - began:.0f} s "
                  f"(log: {(workdir(module) / 'mutmut.log').relative_to(REPO)})", flush=True)
    overall, bugs_ok = write_report(args.report, modules, bugs, args.floor, time.perf_counter() - started)
    print(f"report: {args.report}")
    if modules:
        print("mutation score: " + ("no mutants checked" if overall is None else f"{overall:.1f} % (floor {args.floor:.0f} %)"))
    failed = (modules and (overall is None or overall < args.floor)) or not bugs_ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
