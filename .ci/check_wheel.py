"""Check a built wheel: kernels/ is packaged only as fastconv.kernels, and the installed copy works.

Usage: python .ci/check_wheel.py DIR_WITH_ONE_WHEEL
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

wheel_dir = Path(sys.argv[1])
wheels = sorted(wheel_dir.glob("fastconv-*.whl"))
if len(wheels) != 1:
    sys.exit(f"expected one fastconv wheel in {wheel_dir}, found {wheels}")
names = zipfile.ZipFile(wheels[0]).namelist()
top = sorted({n.split("/")[0] for n in names})
print(f"{wheels[0].name}: top-level entries {top}")
bad = [t for t in top if t == "kernels" or t.startswith("kernels")]
if bad:
    sys.exit(f"wheel must not install a top-level 'kernels' package, found {bad}")
if not any(n.startswith("fastconv/kernels/") and n.endswith(".so") for n in names):
    sys.exit("wheel holds no compiled Cython extension under fastconv/kernels/")
if not any(n.endswith(".dist-info/licenses/LICENSE") for n in names):
    sys.exit("wheel carries no LICENSE file in its .dist-info/licenses/")

site = wheel_dir.parent / "wheel-site"
subprocess.run(
    [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheels[0])], check=True
)
probe = (
    "import importlib.util, fastconv, fastconv.kernels as k;"
    f"assert fastconv.__file__.startswith({str(site.resolve())!r}), fastconv.__file__;"
    "assert importlib.util.find_spec('kernels') is None, 'a top-level kernels module is importable';"
    "b = k.available_backends(); print('installed wheel backends:', b);"
    "assert {'python', 'numpy'} <= set(b), b"
)
# Run from the install folder: from the repo root, -c would put the source tree first on sys.path.
subprocess.run(
    [sys.executable, "-c", probe], check=True, cwd=site, env={"PYTHONPATH": str(site.resolve()), "PATH": ""}
)
print("wheel OK")
