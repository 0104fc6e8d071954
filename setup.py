"""The one compiled part of litedet: ``litedet.ops._native``, YOLO post-processing in C.

Everything else is in pyproject.toml. The extension is optional: where it cannot be built (no
compiler), litedet installs without it and post-processes in numpy, with the same results.
``LITEDET_PURE_PYTHON=1`` leaves it out on purpose (a platform-independent wheel).
"""

import os
import sys

from setuptools import Extension, setup

if os.environ.get("LITEDET_PURE_PYTHON", "") in ("", "0"):
    # No fused multiply-adds: the C code repeats numpy's float arithmetic step by step.
    flags = [] if sys.platform == "win32" else ["-O2", "-ffp-contract=off"]
    extensions = [Extension("litedet.ops._native", ["litedet/ops/_native.c"], extra_compile_args=flags, optional=True)]
else:
    extensions = []

setup(ext_modules=extensions)
