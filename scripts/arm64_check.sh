#!/usr/bin/env bash
# The torch-free runtime on 64-bit ARM (a Raspberry Pi 4/5 with 64-bit Raspberry Pi OS), proven on
# an x86_64 machine with QEMU user-mode emulation.
#
# What it does (idempotent; downloads are cached in $ARM64_CACHE, default .cache/arm64/):
#   1. installs qemu-user-static with apt-get when qemu-aarch64-static is missing;
#   2. unpacks Debian bookworm's arm64 python3.11 and its libraries into an arm64 root
#      (its own apt state under the cache: the machine's apt configuration is not changed);
#   3. builds litedet's wheel with the main .venv and installs it with the `runtime` and `ncnn`
#      extras from the registries' aarch64 wheels, as `pip install 'litedet[runtime,ncnn]'` on a Pi;
#   4. imports the published v5lite-s weights and exports ONNX and ncnn on x86 (.venv);
#   5. runs `litedet detect` in the arm64 root under the emulator on real COCO val2017 images
#      (as PNGs at the model's input scale, see step 5 below): ONNX Runtime and ncnn fp32 on a
#      Cortex-A72 (Raspberry Pi 4), ncnn fp16 on a Cortex-A76 (Raspberry Pi 5, fp16 arithmetic),
#      litedet's CPU probes on ARM, and with --bench a `litedet bench` smoke run (emulated timings
#      not shown);
#   6. compares each run with the same wheel's detections on x86: fp32 must be equal (same classes,
#      boxes within 1 px, scores within 0.005); ncnn fp16 arithmetic must agree with x86 fp32
#      (same objects and classes, boxes within 3 px, scores within 0.1).
#
# Exit codes: 0 passed, 1 a mismatch or a failed step, 2 bad usage or setup (.venv missing),
# 77 skipped: this machine cannot run the check (not x86_64 Linux, no qemu and none installable,
# no ../shared, no registry reachable for an empty cache); the reason is printed. CI treats 77 as
# "skipped".
#
# Usage: scripts/arm64_check.sh [--images N] [--jpeg] [--bench]  (make arm64-check)
#        scripts/arm64_check.sh compare REF.json GOT.json [--box-tol PX] [--score-tol S] [--conf C]
# Environment: LITEDET_SHARED (default ../shared), ARM64_CACHE (default .cache/arm64),
#              PYTHON (default .venv/bin/python).
#
# Why the root has its own /proc/cpuinfo: QEMU 7.2 (Debian bookworm) does not emulate
# /proc/cpuinfo for aarch64 guests, so they read the host's x86 file. ONNX Runtime's cpuinfo library
# then finds no ARM core and ONNX Runtime crashes (SIGSEGV) while importing. qemu's -L prefix
# resolves absolute paths inside the root first, so the root carries the file a Raspberry Pi's
# kernel writes (Features, CPU part), one entry per host CPU.
set -uo pipefail

SKIP=77
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHARED="${LITEDET_SHARED:-$REPO/../shared}"
CACHE="${ARM64_CACHE:-$REPO/.cache/arm64}"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
IMAGES=3
JPEG=0
BENCH=0
# Debian packages for the arm64 root: the interpreter (its libraries come as dependencies) and the
# C++ runtime the manylinux wheels expect from the system.
ARM_PACKAGES=(python3.11 libstdc++6)
ARM_EXTRAS="runtime,ncnn"
START=$SECONDS

say() { printf '[arm64 %4ds] %s\n' "$((SECONDS - START))" "$*" >&2; }
skip() { say "SKIPPED: $*"; exit "$SKIP"; }
fail() { say "FAILED: $*"; exit 1; }

compare() {
    # compare REF GOT [--box-tol PX] [--score-tol S] [--conf C]: the detections of two `litedet
    # detect --json` runs (a JSON list or JSON Lines) match image by image. A detection may be
    # missing on one side only when its score is within the score tolerance of the threshold.
    "$PYTHON" - "$@" <<'PY'
import argparse
import json
import sys
from pathlib import Path

parser = argparse.ArgumentParser(prog="arm64_check.sh compare")
parser.add_argument("reference")
parser.add_argument("candidate")
parser.add_argument("--box-tol", type=float, default=1.0)
parser.add_argument("--score-tol", type=float, default=0.005)
parser.add_argument("--conf", type=float, default=0.25)
args = parser.parse_args()


def load(path: str) -> dict[str, list[dict]]:
    text = Path(path).read_text()
    try:
        data = json.loads(text)
        rows = data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        try:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            sys.exit(f"{path}: not `litedet detect --json` output ({err})")
    try:
        return {Path(row["source"]).name: row["detections"] for row in rows}
    except (KeyError, TypeError):
        sys.exit(f"{path}: not `litedet detect --json` output (objects need 'source' and 'detections')")


reference, candidate = load(args.reference), load(args.candidate)
problems: list[str] = []
if sorted(reference) != sorted(candidate):
    problems.append(f"images differ: {sorted(reference)} vs {sorted(candidate)}")
worst_box = worst_score = 0.0
matched = at_threshold = 0
for image in sorted(set(reference) & set(candidate)):
    unused = list(candidate[image])
    for det in reference[image]:
        best, best_err = None, None
        for other in unused:
            if other["class_id"] != det["class_id"]:
                continue
            err = max(abs(a - b) for a, b in zip(det["box"], other["box"]))
            if best_err is None or err < best_err:
                best, best_err = other, err
        if best is not None and best_err <= args.box_tol and abs(best["score"] - det["score"]) <= args.score_tol:
            unused.remove(best)
            matched += 1
            worst_box = max(worst_box, best_err)
            worst_score = max(worst_score, abs(best["score"] - det["score"]))
        elif det["score"] < args.conf + args.score_tol and (best is None or best_err > args.box_tol):
            at_threshold += 1  # the other side may drop it within the score tolerance
        else:
            found = "none" if best is None else f"{best['box']} score {best['score']} (box off by {best_err:.2f} px)"
            problems.append(f"{image}: {det['class_name']} {det['box']} score {det['score']}: closest {found}")
    for other in unused:
        if other["score"] < args.conf + args.score_tol:
            at_threshold += 1
        else:
            problems.append(f"{image}: extra {other['class_name']} {other['box']} score {other['score']}")
total = sum(len(d) for d in reference.values())
print(f"{matched}/{total} detections matched over {len(reference)} images"
      + (f" ({at_threshold} within the score tolerance of --conf {args.conf} on one side only)" if at_threshold else "") + "; "
      f"largest box difference {worst_box:.2f} px (tolerance {args.box_tol}), "
      f"largest score difference {worst_score:.4f} (tolerance {args.score_tol})")
for line in problems:
    print(f"  MISMATCH {line}")
sys.exit(1 if problems or total == 0 else 0)
PY
}

if [[ "${1:-}" == "compare" ]]; then
    shift
    compare "$@"
    exit $?
fi
while [[ $# -gt 0 ]]; do
    case "$1" in
        --images) IMAGES="$2"; shift 2 ;;
        --jpeg) JPEG=1; shift ;;
        --bench) BENCH=1; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) say "unknown argument $1 (see --help)"; exit 2 ;;
    esac
done
[[ "$IMAGES" =~ ^[1-9][0-9]*$ ]] || { say "--images must be a positive integer, got $IMAGES"; exit 2; }

# --- 0. can this machine run it? -------------------------------------------------------------
[[ "$(uname -s)" == Linux && "$(uname -m)" == x86_64 ]] || skip "needs an x86_64 Linux host with QEMU user mode (this is $(uname -sm))"
[[ -x "$PYTHON" ]] || { say "$PYTHON not found: run 'make setup' first (or set PYTHON)"; exit 2; }
WEIGHTS="$SHARED/weights/yolov5-lite/v5lite-s.ncnn.param"
VAL="$SHARED/data/coco256/images/val2017"
[[ -f "$WEIGHTS" && -d "$VAL" ]] || skip "no shared data: $WEIGHTS or $VAL is missing (set LITEDET_SHARED)"
mkdir -p "$CACHE" || fail "cannot create the cache folder $CACHE"
CACHE="$(cd "$CACHE" && pwd)"
LOG="$CACHE/logs"
mkdir -p "$LOG"

run_logged() {  # run_logged NAME CMD...: output to $LOG/NAME.log, its tail on failure
    local name="$1"; shift
    "$@" >"$LOG/$name.log" 2>&1 && return 0
    local rc=$?
    tail -n 15 "$LOG/$name.log" | sed 's/^/    /' >&2
    return $rc
}

# --- 1. QEMU ---------------------------------------------------------------------------------
if ! command -v qemu-aarch64-static >/dev/null; then
    command -v apt-get >/dev/null || skip "qemu-aarch64-static is missing and there is no apt-get to install it"
    [[ $(id -u) -eq 0 ]] || skip "qemu-aarch64-static is missing; install it as root: apt-get install qemu-user-static"
    say "installing qemu-user-static with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    run_logged apt-qemu apt-get install -y -q --no-install-recommends qemu-user-static \
        || { run_logged apt-update apt-get update -q && run_logged apt-qemu apt-get install -y -q --no-install-recommends qemu-user-static; } \
        || skip "qemu-user-static could not be installed (no Debian registry?): see $LOG/apt-qemu.log"
fi
say "$(qemu-aarch64-static --version | head -n 1)"

# --- 2. arm64 bookworm userland --------------------------------------------------------------
ROOT="$CACHE/root"
APT="$CACHE/apt"
ROOT_STAMP="$ROOT/.litedet-packages"
if [[ ! -x "$ROOT/usr/bin/python3.11" || "$(cat "$ROOT_STAMP" 2>/dev/null)" != "${ARM_PACKAGES[*]}" ]]; then
    say "building the arm64 Debian bookworm root (${ARM_PACKAGES[*]})"
    mkdir -p "$APT/lists/partial" "$APT/archives/partial" "$APT/etc/parts"
    : >"$APT/status"
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    [[ -f $keyring ]] || skip "no Debian archive keyring at $keyring to check arm64 packages with"
    {
        echo "deb [arch=arm64 signed-by=$keyring] http://deb.debian.org/debian bookworm main"
        echo "deb [arch=arm64 signed-by=$keyring] http://deb.debian.org/debian bookworm-updates main"
        echo "deb [arch=arm64 signed-by=$keyring] http://deb.debian.org/debian-security bookworm-security main"
    } >"$APT/etc/sources.list"
    # Its own state, lists, cache and architecture: the host's dpkg and apt lists stay untouched.
    apt_opts=(-o APT::Architecture=arm64 -o "APT::Architectures::=arm64" -o "Dir::State=$APT"
              -o "Dir::State::status=$APT/status" -o "Dir::Cache=$APT" -o "Dir::Cache::archives=$APT/archives"
              -o "Dir::Etc::SourceList=$APT/etc/sources.list" -o "Dir::Etc::SourceParts=$APT/etc/parts"
              -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
    run_logged apt-arm64-update apt-get "${apt_opts[@]}" update -q \
        || skip "cannot reach Debian's arm64 package lists: see $LOG/apt-arm64-update.log"
    rm -f "$APT"/archives/*.deb
    run_logged apt-arm64-download apt-get "${apt_opts[@]}" install -y -q --download-only --no-install-recommends "${ARM_PACKAGES[@]}" \
        || skip "cannot download the arm64 packages: see $LOG/apt-arm64-download.log"
    rm -rf "$ROOT"
    mkdir -p "$ROOT"
    for deb in "$APT"/archives/*.deb; do
        dpkg-deb -x "$deb" "$ROOT" || fail "cannot unpack $deb"
    done
    echo "${ARM_PACKAGES[*]}" >"$ROOT_STAMP"
fi
# A Raspberry Pi's /proc/cpuinfo, one entry per host CPU (see the header for why).
write_cpuinfo() {  # write_cpuinfo PART MODEL FEATURES
    local count last
    last=$(sed -E 's/.*[-,]//' /sys/devices/system/cpu/possible 2>/dev/null || echo 0)
    count=$((last + 1))
    mkdir -p "$ROOT/proc"
    {
        for ((i = 0; i < count; i++)); do
            printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: %s\nCPU implementer\t: 0x41\n' "$i" "$3"
            printf 'CPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: %s\nCPU revision\t: 1\n\n' "$1"
        done
        printf 'Model\t\t: %s\n' "$2"
    } >"$ROOT/proc/cpuinfo"
}
use_cpu() {  # use_cpu cortex-a72|cortex-a76: the emulated core and the matching /proc/cpuinfo
    QEMU_CPU_MODEL="$1"
    case "$1" in
        cortex-a72) write_cpuinfo 0xd08 "Raspberry Pi 4 Model B Rev 1.5" "fp asimd evtstrm crc32 cpuid" ;;
        cortex-a76) write_cpuinfo 0xd0b "Raspberry Pi 5 Model B Rev 1.0" "fp asimd evtstrm crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp" ;;
    esac
}
ARM_SITE="$CACHE/site-arm64"
LITEDET_ARM="$CACHE/litedet-arm64"
LITEDET_X86="$CACHE/litedet-x86"
arm_python() {  # the arm64 root's python3.11 under the emulator, with the installed wheels
    # (run from the cache: `python -m` puts the working folder first on sys.path, and the
    # repository's own litedet/ must not shadow the wheel)
    cd "$CACHE" && nice -n 10 qemu-aarch64-static -cpu "$QEMU_CPU_MODEL" -L "$ROOT" \
        -E "PYTHONPATH=$LITEDET_ARM:$ARM_SITE" -E PYTHONDONTWRITEBYTECODE=1 -E LC_ALL=C.UTF-8 \
        "$ROOT/usr/bin/python3.11" "$@"
}
use_cpu cortex-a72
(arm_python -c "import sys, platform; assert platform.machine() == 'aarch64'; print(sys.version.split()[0])") >"$LOG/python.log" 2>&1 \
    || fail "the arm64 python3.11 does not start under qemu: $(tail -n 3 "$LOG/python.log")"
say "arm64 root ready: Python $(cat "$LOG/python.log") for aarch64 (Debian bookworm)"

# --- 3. litedet's wheel and its aarch64 dependencies -----------------------------------------
say "building litedet's wheel"
rm -rf "$CACHE/dist"
# A pure-Python wheel: the one built on x86 installs on arm64 too (without the compiled
# post-processing, which needs the Pi's own compiler at install time); both sides run its numpy path.
export LITEDET_PURE_PYTHON=1
# With the .venv's setuptools first (no download; it builds wheels itself), else in an isolated
# environment from PyPI; pip's own wheel builder where `build` (dev extra) is not installed.
if "$PYTHON" -c "import build" 2>/dev/null; then
    run_logged wheel "$PYTHON" -m build --wheel --no-isolation --skip-dependency-check --outdir "$CACHE/dist" "$REPO" \
        || run_logged wheel "$PYTHON" -m build --wheel --outdir "$CACHE/dist" "$REPO" \
        || fail "wheel build failed: see $LOG/wheel.log"
else
    run_logged wheel "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w "$CACHE/dist" "$REPO" \
        || fail "wheel build failed: see $LOG/wheel.log"
fi
WHEEL=$(ls "$CACHE"/dist/litedet-*.whl 2>/dev/null | head -n 1)
[[ -n "$WHEEL" ]] || fail "no wheel in $CACHE/dist"
[[ "$WHEEL" == *-none-any.whl ]] || fail "$WHEEL is not a pure-Python wheel (LITEDET_PURE_PYTHON=1 was ignored)"
# The wheel's RECORD lists a hash of every file in it: the key for the exports made from it.
KEY=$("$PYTHON" -c "import hashlib, sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); r = [n for n in z.namelist() if n.endswith('.dist-info/RECORD')][0]; print(hashlib.sha256(z.read(r)).hexdigest()[:16])" "$WHEEL") \
    || fail "cannot read $WHEEL"

# Every manylinux tag bookworm's glibc 2.36 accepts: pip does not widen one given --platform.
PLATFORMS=(--platform manylinux2014_aarch64)
for minor in $(seq 36 -1 17); do PLATFORMS+=(--platform "manylinux_2_${minor}_aarch64"); done
PIP_ARM=(--python-version 3.11 --implementation cp --abi cp311 --only-binary=:all: "${PLATFORMS[@]}")
say "fetching the aarch64 wheels for litedet[$ARM_EXTRAS]"
if ! run_logged pip-download "$PYTHON" -m pip download -q "${PIP_ARM[@]}" -d "$CACHE/wheels" "$WHEEL[$ARM_EXTRAS]"; then
    [[ -d "$ARM_SITE" ]] || skip "cannot fetch the aarch64 wheels (no PyPI?): see $LOG/pip-download.log"
    say "PyPI not reachable: using the aarch64 wheels installed before in $ARM_SITE"
fi
rm -f "$CACHE"/wheels/litedet-*.whl
SITE_STAMP=$(ls "$CACHE/wheels" | sort | sha256sum | cut -c1-16)
if [[ "$(cat "$ARM_SITE/.litedet-stamp" 2>/dev/null)" != "$SITE_STAMP" ]]; then
    rm -rf "$ARM_SITE"
    run_logged pip-install-deps "$PYTHON" -m pip install -q --no-index --find-links "$CACHE/wheels" --target "$ARM_SITE" \
        "${PIP_ARM[@]}" "$WHEEL[$ARM_EXTRAS]" || fail "cannot install the aarch64 wheels: see $LOG/pip-install-deps.log"
    rm -rf "$ARM_SITE"/litedet "$ARM_SITE"/litedet-*.dist-info "$ARM_SITE/bin"
    echo "$SITE_STAMP" >"$ARM_SITE/.litedet-stamp"
fi
# litedet itself, fresh every run, once for each side: both sides run the same code.
for target in "$LITEDET_ARM" "$LITEDET_X86"; do
    rm -rf "$target"
    run_logged pip-install-litedet "$PYTHON" -m pip install -q --no-deps --no-index --target "$target" "$WHEEL" \
        || fail "cannot install $WHEEL: see $LOG/pip-install-litedet.log"
    rm -rf "$target/bin"
done
say "installed on arm64: $(cd "$ARM_SITE" && ls -d *.dist-info | sed 's/.dist-info//' | grep -E -i '^(numpy|opencv|onnxruntime|ncnn)' | tr '\n' ' ')"

# --- 4. models exported on x86 ---------------------------------------------------------------
MODELS="$CACHE/models/$KEY"
x86_litedet() { (cd "$CACHE" && PYTHONPATH="$LITEDET_X86" nice -n 10 "$PYTHON" -m litedet "$@"); }
if [[ ! -f "$MODELS/model.onnx" || ! -f "$MODELS/model_ncnn.param" ]]; then
    say "importing the published v5lite-s weights and exporting ONNX and ncnn on x86"
    rm -rf "$MODELS" && mkdir -p "$MODELS"
    run_logged import x86_litedet import "$WEIGHTS" --arch v5lite-s -o "$MODELS/v5lite-s.safetensors" || fail "litedet import failed: see $LOG/import.log"
    for format in onnx ncnn; do
        run_logged "export-$format" x86_litedet export --model v5lite-s --weights "$MODELS/v5lite-s.safetensors" --format "$format" -o "$MODELS" \
            || fail "litedet export --format $format failed: see $LOG/export-$format.log"
    done
    # Exports of older wheels are of no more use.
    find "$CACHE/models" -mindepth 1 -maxdepth 1 ! -name "$KEY" -exec rm -rf {} +
else
    say "reusing the exports in $MODELS (same wheel contents)"
fi

# --- 5. detect on x86 and under the emulator -------------------------------------------------
# OpenCV's INTER_LINEAR resize is not bit-exact across architectures (its x86 and ARM kernels
# differ by 1 grey level on about a fifth of the pixels), and one grey level can move a borderline
# box. So by default both sides get PNGs already at the model's input scale (long side = input
# size; `litedet detect` then does not resize) and the comparison is of the engines and the
# post-processing; --jpeg gives the original JPEGs instead.
SOURCE="$CACHE/images"
rm -rf "$SOURCE" && mkdir -p "$SOURCE"
mapfile -t picked < <(cd "$VAL" && ls -- *.jpg | sort | head -n "$IMAGES")
[[ ${#picked[@]} -eq "$IMAGES" ]] || skip "only ${#picked[@]} images in $VAL"
if [[ $JPEG -eq 1 ]]; then
    for image in "${picked[@]}"; do ln -s "$VAL/$image" "$SOURCE/$image"; done
    INPUTS="original JPEGs"
else
    "$PYTHON" - "$MODELS/model.json" "$SOURCE" "${picked[@]/#/$VAL/}" <<'PY' || fail "cannot write the input PNGs"
import json
import sys
from pathlib import Path

import cv2

config, out = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
size = max(config["input_size"])
for path in sys.argv[3:]:
    image = cv2.imread(path)
    height, width = image.shape[:2]
    gain = size / max(height, width)
    image = cv2.resize(image, (round(width * gain), round(height * gain)), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(out / (Path(path).stem + ".png")), image)
PY
    INPUTS="PNGs at the input scale"
fi
FIRST="$CACHE/images-first"  # the first image alone, for the slowest emulation (fp16 arithmetic)
rm -rf "$FIRST" && mkdir -p "$FIRST"
first=$(ls "$SOURCE" | head -n 1)
cp -P "$SOURCE/$first" "$FIRST/$first"
OUT="$CACHE/out"
rm -rf "$OUT" && mkdir -p "$OUT"

# name | emulated core | weights | detect options | images | box tolerance (px) | score tolerance.
# fp32 must equal x86. ncnn's fp16 arithmetic (Cortex-A76 and later: asimdhp) rounds every
# intermediate to 11 significant bits, so that row checks agreement with x86 fp32 instead: same
# objects and classes, boxes within 3 px, scores within 0.1 (the largest differences are printed).
RUNS=(
    "onnxruntime fp32|cortex-a72|model.onnx|--precision fp32|all|1|0.005"
    "ncnn fp32|cortex-a72|model_ncnn.param|--precision fp32|all|1|0.005"
    "ncnn fp16|cortex-a76|model_ncnn.param|--precision fp16|first|3|0.1"
)
status=0
summary=()
for spec in "${RUNS[@]}"; do
    IFS='|' read -r name cpu weights options images box_tol score_tol <<<"$spec"
    source_dir=$SOURCE
    [[ $images == first ]] && source_dir=$FIRST
    tag="${name// /-}-$images"
    reference="$OUT/x86-${weights%%.*}-$images.json"
    if [[ ! -f "$reference" ]]; then
        if ! x86_litedet detect --weights "$MODELS/$weights" --source "$source_dir" --json --no-progress \
            >"$reference" 2>"$LOG/x86-$tag.log"; then
            tail -n 15 "$LOG/x86-$tag.log" | sed 's/^/    /' >&2
            fail "litedet detect with $weights on x86 failed: see $LOG/x86-$tag.log"
        fi
    fi
    use_cpu "$cpu"
    count=$(ls "$source_dir" | wc -l)
    say "litedet detect on aarch64 ($cpu, emulated): $name, $count image(s)"
    # shellcheck disable=SC2086 # options is a list of words
    if ! (arm_python -m litedet detect --weights "$MODELS/$weights" --source "$source_dir" --json --no-progress $options) \
        >"$OUT/arm64-$tag.json" 2>"$LOG/arm64-$tag.log"; then
        tail -n 15 "$LOG/arm64-$tag.log" | sed 's/^/    /' >&2
        summary+=("FAIL  $name on $cpu: litedet detect failed (see $LOG/arm64-$tag.log)")
        status=1
        continue
    fi
    result=$(compare "$reference" "$OUT/arm64-$tag.json" --box-tol "$box_tol" --score-tol "$score_tol")
    if [[ $? -eq 0 ]]; then
        summary+=("OK    $name on $cpu: $(head -n 1 <<<"$result")")
    else
        summary+=("FAIL  $name on $cpu: $result")
        status=1
    fi
done

# --- 6. CPU probes on ARM --------------------------------------------------------------------
use_cpu cortex-a72
if (arm_python -) >"$OUT/probe.txt" 2>"$LOG/probe.log" <<'PY'
from litedet.bench.machine import cpu_flags, cpu_model, machine_info

info = machine_info(threads=(1,), measure=False)
assert info.system.endswith("aarch64"), info.system
assert "Cortex-A72" in cpu_model(), cpu_model()
assert "asimd" in cpu_flags(), cpu_flags()
print(f"cpu_model={info.cpu_model!r} flags={info.cpu_flags} logical_cpus={info.logical_cpus} engines={info.engines}")
PY
then
    summary+=("OK    CPU probes on cortex-a72: $(cat "$OUT/probe.txt")")
else
    tail -n 15 "$LOG/probe.log" | sed 's/^/    /' >&2
    summary+=("FAIL  CPU probes on cortex-a72 (see $LOG/probe.log)")
    status=1
fi

# --- 7. litedet bench on ARM (--bench) -------------------------------------------------------
# A smoke run of the device benchmark on the exported ncnn file (3 timed runs): it must describe
# the ARM machine and write its report. Timings under emulation mean nothing and are not shown.
# Opt-in: its fp32 peak measurement (n=2048 matrix products) takes minutes under emulation.
if [[ $BENCH -eq 1 ]]; then
    if (arm_python -m litedet bench --models v5lite-s@416 --engines ncnn --weights "v5lite-s=$MODELS/model_ncnn.param" \
            --threads 1 --runs 3 --warmup 1 --max-attempts 1 --out "$OUT/bench" --cache "$OUT/bench-cache") >"$LOG/bench.log" 2>&1 \
        && bench_line=$("$PYTHON" - "$OUT/bench/results.json" <<'PY'
import json
import sys

data = json.load(open(sys.argv[1]))
rows = data["rows"] if isinstance(data, dict) else data
machine = data.get("machine", {}) if isinstance(data, dict) else {}
ok = [r for r in rows if r.get("engine") == "ncnn" and r.get("median_ms")]
if not ok:
    sys.exit("no ncnn row with a latency in the report")
print(f"{len(ok)} ncnn row(s); machine {machine.get('cpu_model', '?')!r}")
PY
    ); then
        summary+=("OK    litedet bench on cortex-a72 (ncnn, smoke run, timings not shown): $bench_line")
    else
        tail -n 15 "$LOG/bench.log" | sed 's/^/    /' >&2
        summary+=("FAIL  litedet bench on cortex-a72 (see $LOG/bench.log)")
        status=1
    fi
fi

say "summary (v5lite-s, $IMAGES COCO val2017 images as $INPUTS; x86 reference from the same wheel; $((SECONDS - START)) s)"
for line in "${summary[@]}"; do printf '  %s\n' "$line"; done
if [[ $status -eq 0 ]]; then say "PASSED: aarch64 detections match the x86 ones"; else say "FAILED: see above"; fi
exit $status
