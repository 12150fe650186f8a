"""Build script: compiles every ``kernels/*.pyx`` into ``fastconv.kernels.<name>``.

OpenMP is used when the compiler accepts ``-fopenmp`` (checked by compiling and linking a tiny
program), and left out otherwise: the Cython kernels then run serially, and
``fastconv info`` reports which (see ``kernels/_openmp.pyx``). Set ``FASTCONV_NO_OPENMP=1``
to force a serial build.
"""

from __future__ import annotations

import glob
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def compiler_accepts(flags: list[str], src: str = "int main(void){ return 0; }\n") -> bool:
    """Whether the C compiler compiles and links ``src`` with ``flags`` (without errors)."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    cc = cc.split()
    if shutil.which(cc[0]) is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "t.c")
        with open(path, "w") as f:
            f.write(src)
        try:
            result = subprocess.run(
                [*cc, *flags, path, "-o", os.path.join(tmp, "t")],
                capture_output=True,
                timeout=60,
            )
        except (OSError, subprocess.SubprocessError):
            return False
        return result.returncode == 0


def compiler_has_openmp() -> bool:
    if os.environ.get("FASTCONV_NO_OPENMP"):
        return False
    return compiler_accepts(
        ["-fopenmp"], "#include <omp.h>\nint main(void){ return omp_get_max_threads() > 0 ? 0 : 1; }\n"
    )


def conv_flags() -> dict[str, list[str]]:
    """Extra compiler flags of the conv kernels, per module (kernels/cython_conv.pyx docs why).

    * Both builds: gcc's early "complete unrolling of inner loops" pass (cunrolli) would turn the
      direct kernels' fixed-size accumulator block into dozens of scalar variables before the
      vectoriser runs, which then cannot put them back into SIMD registers (measured: 19 ms
      instead of ~2 ms for catnet's first layer). Without it the vectoriser sees the small
      constant loops, makes each one SIMD, and the later unroller keeps the block in registers.
    * cython_conv_avx2 (x86-64 only, when the compiler knows the flags): the same source for
      AVX2 + FMA; cython_backend loads it only on CPUs that have both.
    """
    keep_loops = ["-fdisable-tree-cunrolli"] if compiler_accepts(["-fdisable-tree-cunrolli"]) else []
    # cython_norm's float64 lane sums are the same kind of fixed-size block.
    flags = {"cython_conv": keep_loops, "cython_norm": keep_loops}
    if platform.machine().lower() in ("x86_64", "amd64") and compiler_accepts(["-mavx2", "-mfma"]):
        flags["cython_conv_avx2"] = [*keep_loops, "-mavx2", "-mfma"]
        # AVX2 only, no FMA: without fused multiply-adds the AVX2 build rounds exactly as the
        # baseline one (same lanes, same operations), so results stay bit-identical across
        # builds and a trained model stays reproducible on both (tested).
        flags["cython_norm_avx2"] = [*keep_loops, "-mavx2", "-ffp-contract=off"]
        # pooling: compares, selects and float64 sums are exact, so likewise bit-identical
        flags["cython_pool_avx2"] = ["-mavx2", "-ffp-contract=off"]
        # depthwise: multiply then add, rounded as in the baseline build (no FMA): bit-identical
        flags["cython_depthwise_avx2"] = ["-mavx2", "-ffp-contract=off"]
    return flags


def extensions() -> list[Extension]:
    import numpy as np
    from Cython.Build import cythonize

    openmp = compiler_has_openmp()
    print(f"fastconv: building Cython kernels {'with' if openmp else 'without'} OpenMP", file=sys.stderr)
    omp_flags = ["-fopenmp"] if openmp else []
    extra = conv_flags()
    exts = []
    for pyx in sorted(glob.glob(os.path.join("kernels", "*.pyx"))):
        name = os.path.splitext(os.path.basename(pyx))[0]
        if name.endswith("_avx2") and name not in extra:
            continue  # an AVX2 build, on a machine or compiler that cannot make it
        exts.append(
            Extension(
                f"fastconv.kernels.{name}",
                [pyx],
                include_dirs=[np.get_include()],
                # -O3 lets gcc vectorise the contiguous inner loops; no -march=native, so a
                # wheel built here still runs on any x86-64 machine.
                extra_compile_args=["-O3", *omp_flags, *extra.get(name, [])],
                extra_link_args=omp_flags,
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            )
        )
    return cythonize(
        exts,
        compiler_directives={"language_level": "3", "embedsignature": True},
        quiet=True,
    )


def build_jobs() -> int:
    """C modules compiled at once (build_ext's threads): one per core, FASTCONV_BUILD_JOBS
    overrides. Each module is one long compiler run, so on 2 cores this about halves a build, and
    CI builds three times (editable install, wheel check, AddressSanitizer copy)."""
    raw = os.environ.get("FASTCONV_BUILD_JOBS", "").strip()
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise SystemExit(f"FASTCONV_BUILD_JOBS: expected a positive whole number, got {raw!r}")
        return int(raw)
    # the cores this process may run on (a CPU quota or taskset), not every core of the machine
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores or 1


class BuildExt(build_ext):
    """Recompile every module when the build configuration changed since the last build in this
    checkout (OpenMP on/off, compiler, flags). setuptools alone recompiles only modules whose C
    source is newer than the object, so switching FASTCONV_NO_OPENMP or CC left a mix of OpenMP
    and serial modules that ``fastconv info`` reported as an OpenMP build."""

    def finalize_options(self) -> None:
        super().finalize_options()
        if not self.parallel:  # unless -j was given
            self.parallel = build_jobs()

    def run(self) -> None:
        config = repr(
            (os.environ.get("CC"), sorted((e.name, e.extra_compile_args, e.extra_link_args) for e in self.extensions))
        )
        stamp = os.path.join(self.build_temp, "fastconv-build-config.txt")
        try:
            with open(stamp) as f:
                self.force = self.force or f.read() != config
        except OSError:
            self.force = True  # no record of what built the objects here: rebuild them
        super().run()
        os.makedirs(self.build_temp, exist_ok=True)
        with open(stamp, "w") as f:
            f.write(config)


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
