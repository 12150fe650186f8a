"""The catvnoncat download path against a local HTTP server on 127.0.0.1 serving the real files.

The server (http.server in a thread, port 0) answers under prefixes that each simulate one
failure: ``/good/`` the real bytes, ``/missing/`` 404, ``/corrupt/`` one byte changed,
``/partial/`` half the body then a closed connection (Content-Length announces the whole file),
``/partial-nolength/`` the same without Content-Length, ``/slow/`` no answer for seconds.
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import time
from pathlib import Path

import pytest

from fastconv import data as D

FILES = ("train_catvnoncat.h5", "test_catvnoncat.h5")


def _sums_from_file(folder: Path) -> dict[str, str]:
    """Expected digests from the data folder's SHA256SUMS (independent of the code under test)."""
    out = {}
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        if line.strip():
            digest, name = line.split()
            out[name.lstrip("*")] = digest
    return out


@pytest.fixture
def real_files(data_dir) -> dict[str, bytes]:
    folder = data_dir / "catvnoncat"
    return {name: (folder / name).read_bytes() for name in FILES}


@pytest.fixture
def expected_sums(data_dir) -> dict[str, str]:
    return _sums_from_file(data_dir / "catvnoncat")


@pytest.fixture
def server(real_files):
    """Base URL of a local server; every request path is recorded in ``server.hits``."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def do_GET(self):
            hits.append(self.path)
            _, mode, name = self.path.split("/", 2)
            body = real_files.get(name)
            if body is None or mode == "missing":
                self.send_error(404, "not here")
                return
            if mode == "slow":
                time.sleep(3)
            if mode == "corrupt":
                body = body[:1000] + bytes([body[1000] ^ 0xFF]) + body[1001:]
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            if mode != "partial-nolength":
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if mode.startswith("partial"):
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                pass

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True
        block_on_close = False

    srv = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"

    class Info(str):
        pass

    info = Info(base)
    info.hits = hits
    yield info
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def refused_url() -> str:
    """A URL on a local port nobody listens on (bound, then closed)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/good"


@pytest.fixture
def isolated(data_dir, tmp_path, monkeypatch) -> Path:
    """No FASTCONV_DATA, a private cache dir, no mirror override; returns the cache dir.

    Requests ``data_dir`` first so fixtures reading the real files resolve before the variable goes."""
    monkeypatch.delenv("FASTCONV_DATA", raising=False)
    monkeypatch.delenv("FASTCONV_MIRRORS", raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv("FASTCONV_CACHE", str(cache))
    return cache


def _assert_nothing_left(folder: Path) -> None:
    left = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
    assert left == [], f"a failed download left files behind: {left}"


def test_checksums_in_code_match_the_published_sums(expected_sums):
    assert expected_sums == D.CATVNONCAT_SHA256


def test_download_success_writes_the_exact_file_and_nothing_else(server, tmp_path, real_files, expected_sums):
    name = "train_catvnoncat.h5"
    dest = tmp_path / "dl"
    path = D.download([f"{server}/good"], name, dest, expected_sums[name], timeout=10)
    assert path == dest / name
    assert path.read_bytes() == real_files[name]
    assert sorted(p.name for p in dest.iterdir()) == [name]  # no temporary file survives
    assert server.hits == [f"/good/{name}"]


def test_mirror_fallback_after_404_and_refused(server, tmp_path, refused_url, real_files, expected_sums):
    name = "test_catvnoncat.h5"
    path = D.download([refused_url, f"{server}/missing", f"{server}/good"], name, tmp_path, expected_sums[name])
    assert path.read_bytes() == real_files[name]
    assert server.hits == [f"/missing/{name}", f"/good/{name}"]


def test_hash_mismatch_fails_and_leaves_no_file(server, tmp_path, expected_sums):
    name = "train_catvnoncat.h5"
    dest = tmp_path / "dl"
    with pytest.raises(D.DownloadError) as err:
        D.download([f"{server}/corrupt"], name, dest, expected_sums[name])
    msg = str(err.value)
    assert "checksum mismatch" in msg and expected_sums[name] in msg
    assert f"{server}/corrupt/{name}" in msg
    _assert_nothing_left(dest)


def test_every_failure_is_reported(server, tmp_path, refused_url, expected_sums):
    name = "train_catvnoncat.h5"
    urls = [refused_url, f"{server}/missing", f"{server}/corrupt"]
    with pytest.raises(D.DownloadError) as err:
        D.download(urls, name, tmp_path, expected_sums[name])
    msg = str(err.value)
    for u in urls:
        assert f"{u}/{name}" in msg
    assert "404" in msg and "checksum mismatch" in msg
    _assert_nothing_left(tmp_path)


def test_connection_refused_says_how_to_get_the_data(tmp_path, refused_url, isolated, expected_sums):
    name = "test_catvnoncat.h5"
    with pytest.raises(RuntimeError) as err:  # DownloadError is also a RuntimeError (and a DataError)
        D.download([refused_url], name, tmp_path / "dl", expected_sums[name])
    assert isinstance(err.value, D.DataError)
    msg = str(err.value)
    assert refused_url in msg
    assert "--data" in msg and "FASTCONV_DATA" in msg and str(isolated / "catvnoncat") in msg
    _assert_nothing_left(tmp_path / "dl")


@pytest.mark.parametrize("mode", ["partial", "partial-nolength"])
def test_partial_download_never_leaves_a_complete_looking_file(server, tmp_path, mode, expected_sums):
    name = "train_catvnoncat.h5"
    dest = tmp_path / "dl"
    with pytest.raises(D.DownloadError):
        D.download([f"{server}/{mode}"], name, dest, expected_sums[name])
    _assert_nothing_left(dest)


def test_partial_download_keeps_an_existing_good_file(server, tmp_path, real_files, expected_sums):
    name = "test_catvnoncat.h5"
    (tmp_path / name).write_bytes(real_files[name])
    with pytest.raises(D.DownloadError):
        D.download([f"{server}/partial"], name, tmp_path, expected_sums[name])
    assert (tmp_path / name).read_bytes() == real_files[name]
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_timeout_moves_on_to_the_next_mirror(server, tmp_path, real_files, expected_sums):
    name = "test_catvnoncat.h5"
    t0 = time.monotonic()
    path = D.download([f"{server}/slow", f"{server}/good"], name, tmp_path, expected_sums[name], timeout=0.5)
    assert path.read_bytes() == real_files[name]
    assert time.monotonic() - t0 < 2.5  # gave up on /slow before its 3 s answer


def test_find_catvnoncat_downloads_into_the_cache_then_reuses_it(
    server, isolated, monkeypatch, refused_url, real_files
):
    monkeypatch.setenv("FASTCONV_MIRRORS", f"{server}/missing, {server}/good")
    folder = D.find_catvnoncat()
    assert folder == isolated / "catvnoncat"
    for name in FILES:
        assert (folder / name).read_bytes() == real_files[name]
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)
    ds = D.load_catvnoncat()
    assert ds.x_train.shape == (209, 3, 64, 64) and ds.x_test.shape == (50, 3, 64, 64)

    # Served from the cache now: an unreachable mirror list and download=False both work.
    monkeypatch.setenv("FASTCONV_MIRRORS", refused_url)
    assert D.find_catvnoncat() == folder
    assert D.find_catvnoncat(download=False) == folder


def test_corrupt_cached_file_is_downloaded_again(server, isolated, monkeypatch, real_files, expected_sums):
    cached = isolated / "catvnoncat"
    cached.mkdir(parents=True)
    for name in FILES:
        (cached / name).write_bytes(real_files[name])
    bad = bytearray(real_files["train_catvnoncat.h5"])
    bad[5000] ^= 1
    (cached / "train_catvnoncat.h5").write_bytes(bytes(bad))

    with pytest.raises(D.DataError) as err:  # without download it reports expected vs got
        D.find_catvnoncat(download=False)
    msg = str(err.value)
    assert str(cached / "train_catvnoncat.h5") in msg
    assert expected_sums["train_catvnoncat.h5"] in msg
    assert hashlib.sha256(bytes(bad)).hexdigest() in msg

    monkeypatch.setenv("FASTCONV_MIRRORS", f"{server}/good")
    assert D.find_catvnoncat() == cached
    assert (cached / "train_catvnoncat.h5").read_bytes() == real_files["train_catvnoncat.h5"]
    assert server.hits == ["/good/train_catvnoncat.h5"]  # the intact test file was not fetched


def test_no_data_and_no_network_gives_a_clear_error(isolated, monkeypatch, refused_url):
    monkeypatch.setenv("FASTCONV_MIRRORS", refused_url)
    with pytest.raises(D.DownloadError) as err:
        D.find_catvnoncat()
    msg = str(err.value)
    assert "train_catvnoncat.h5" in msg and refused_url in msg
    assert "--data" in msg and "FASTCONV_DATA" in msg and str(isolated / "catvnoncat") in msg
    assert not (isolated / "catvnoncat" / "train_catvnoncat.h5").exists()


def test_no_data_with_download_disabled_names_the_places_searched(isolated, tmp_path, monkeypatch):
    empty = tmp_path / "somewhere"
    empty.mkdir()
    monkeypatch.setenv("FASTCONV_DATA", str(empty))
    with pytest.raises(D.DataError) as err:
        D.find_catvnoncat(download=False)
    msg = str(err.value)
    assert "downloading is disabled" in msg
    assert str(empty) in msg and str(isolated / "catvnoncat") in msg


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("FASTCONV_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert D.cache_dir() == tmp_path / "home" / ".cache" / "fastconv"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert D.cache_dir() == tmp_path / "xdg" / "fastconv"
    monkeypatch.setenv("FASTCONV_CACHE", str(tmp_path / "mine"))
    assert D.cache_dir() == tmp_path / "mine"


def test_mirror_list_from_environment(monkeypatch):
    monkeypatch.setenv("FASTCONV_MIRRORS", " http://a/x ,, file:///b ")
    assert D.catvnoncat_mirrors() == ["http://a/x", "file:///b"]
    monkeypatch.setenv("FASTCONV_MIRRORS", "")
    assert D.catvnoncat_mirrors() == D.CATVNONCAT_MIRRORS
    assert all(u.startswith("https://") for u in D.CATVNONCAT_MIRRORS)


def test_progress_bar_goes_to_stderr(server, tmp_path, expected_sums, capsys):
    name = "test_catvnoncat.h5"
    D.download([f"{server}/good"], name, tmp_path, expected_sums[name], progress=True)
    captured = capsys.readouterr()
    assert name in captured.err and captured.out == ""


def test_file_url_mirror_works(data_dir, tmp_path, real_files, expected_sums):
    name = "test_catvnoncat.h5"
    path = D.download([(data_dir / "catvnoncat").as_uri()], name, tmp_path, expected_sums[name])
    assert path.read_bytes() == real_files[name]
