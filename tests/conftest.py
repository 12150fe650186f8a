"""Shared fixtures: the backends under test, the data directory, seeded random arrays.

``FASTCONV_DATA`` defaults to ``../shared/data`` (relative to the project root) when that
folder exists; the library itself never assumes it. Tests that need real data use the
``data_dir`` fixture, which skips with a reason when the data is absent.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
_default_data = ROOT.parent / "shared" / "data"
if "FASTCONV_DATA" not in os.environ and _default_data.is_dir():
    os.environ["FASTCONV_DATA"] = str(_default_data)

# Tests never read or fill the user's cache (~/.cache/fastconv): decoded image folders and
# downloads go to a throw-away folder for this session, even when FASTCONV_CACHE is set.
_test_cache = tempfile.mkdtemp(prefix="fastconv-test-cache-")
atexit.register(shutil.rmtree, _test_cache, ignore_errors=True)
os.environ["FASTCONV_CACHE"] = _test_cache

import fastconv.kernels as K  # noqa: E402  (after FASTCONV_DATA is set)

BACKENDS = K.available_backends()
FAST_BACKENDS = [b for b in BACKENDS if b != "python"]


def pytest_report_header(config):
    return [
        f"fastconv backends: {', '.join(BACKENDS)}; unavailable: {sorted(K.backend_errors())}",
        f"FASTCONV_DATA={os.environ.get('FASTCONV_DATA', '(unset)')}",
    ]


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    """Every available backend, the reference included."""
    return request.param


@pytest.fixture(params=FAST_BACKENDS or ["python"])
def fast_backend(request) -> str:
    """Every available backend except the python reference (compared against it)."""
    return request.param


@pytest.fixture
def data_dir() -> Path:
    """The shared data folder (FASTCONV_DATA); skips when it is absent."""
    raw = os.environ.get("FASTCONV_DATA")
    if not raw or not Path(raw).is_dir():
        pytest.skip("real data not found: set FASTCONV_DATA to the folder holding catvnoncat/ and cifar10-cat/")
    return Path(raw)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)
