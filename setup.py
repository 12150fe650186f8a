"""Build script: compiles every ``kernels/*.pyx`` into ``fastconv.kernels.<name>``.

OpenMP is used when the compiler accepts ``-fopenmp`` (checked by compiling and linking a tiny
program), and left out otherwise: the Cython kernels then run serially, and
``fastconv info`` reports which (see ``kernels/_openmp.pyx``). Set ``FASTCONV_NO_OPENMP=1``
to force a serial build.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

from setuptools import Extension, setup


def compiler_has_openmp() -> bool:
    if os.environ.get("FASTCONV_NO_OPENMP"):
        return False
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    cc = cc.split()
    if shutil.which(cc[0]) is None:
        return False
    src = "#include <omp.h>\nint main(void){ return omp_get_max_threads() > 0 ? 0 : 1; }\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "t.c")
        with open(path, "w") as f:
            f.write(src)
        try:
            result = subprocess.run(
                [*cc, "-fopenmp", path, "-o", os.path.join(tmp, "t")],
                capture_output=True,
                timeout=60,
            )
        except (OSError, subprocess.SubprocessError):
            return False
        return result.returncode == 0


def extensions() -> list[Extension]:
    import numpy as np
    from Cython.Build import cythonize

    openmp = compiler_has_openmp()
    print(f"fastconv: building Cython kernels {'with' if openmp else 'without'} OpenMP", file=sys.stderr)
    omp_flags = ["-fopenmp"] if openmp else []
    exts = []
    for pyx in sorted(glob.glob(os.path.join("kernels", "*.pyx"))):
        name = os.path.splitext(os.path.basename(pyx))[0]
        exts.append(
            Extension(
                f"fastconv.kernels.{name}",
                [pyx],
                include_dirs=[np.get_include()],
                # -O3 lets gcc vectorise the contiguous inner loops; no -march=native, so a
                # wheel built here still runs on any x86-64 machine.
                extra_compile_args=["-O3", *omp_flags],
                extra_link_args=omp_flags,
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            )
        )
    return cythonize(
        exts,
        compiler_directives={"language_level": "3", "embedsignature": True},
        quiet=True,
    )


setup(ext_modules=extensions())
