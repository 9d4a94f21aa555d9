"""The dataset's facts and its four files: names, shapes, where the shipped copy lives, IDX and checksum checks.

Imports only the standard library (NumPy inside the label check), so flag definitions and the serving
check can use it before (or without) TensorFlow, and ``--help`` answers without NumPy's import.
"""

import gzip
import hashlib
import pathlib
import struct

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SHAPE = (28, 28)
NUM_PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
SOURCES = ("tfds", "idx")
TFDS_NAME = "fashion_mnist"

# The shipped copy of Zalando's files (package data, so it travels with any install); the offline
# default for both sources.
DEFAULT_RAW_DIR = pathlib.Path(__file__).resolve().parent / "fashion-mnist"

# split -> (images file, labels file), the names TFDS's manual_dir expects too.
RAW_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
SPLIT_SIZES = {"train": 60_000, "test": 10_000}

IMAGES_HEADER_BYTES = 16
LABELS_HEADER_BYTES = 8
_IMAGES_MAGIC = 0x00000803
_LABELS_MAGIC = 0x00000801


class DataError(ValueError):
    """A data file or folder is missing or does not hold what Fashion-MNIST should."""


def _fix_hint(raw_dir):
    return (
        f"restore the four original Fashion-MNIST .gz files in {raw_dir} "
        f"(the project ships them in {DEFAULT_RAW_DIR}; check with `sha256sum -c SHA256SUMS` there) "
        "or pass another folder"
    )


def check_raw_dir(raw_dir):
    """DataError unless ``raw_dir`` is a folder (what its files hold is checked where they are read)."""
    if not pathlib.Path(raw_dir).is_dir():
        raise DataError(f"raw_dir {raw_dir} does not exist or is not a folder")


def raw_file_paths(raw_dir, split):
    """Paths of ``split``'s (images, labels) files in ``raw_dir``; DataError if a file is missing."""
    raw_dir = pathlib.Path(raw_dir)
    if not raw_dir.is_dir():
        raise DataError(f"raw data folder {raw_dir} does not exist: {_fix_hint(raw_dir)}")
    paths = tuple(raw_dir / name for name in RAW_FILES[split])
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path}: file missing: {_fix_hint(raw_dir)}")
    return paths


def read_idx_header(path, kind):
    """Validate an IDX .gz file's header and gzip size field; return its item count.

    ``kind`` is "images" or "labels". Reads 16 bytes and the gzip trailer only: the pixels themselves
    are checked by gzip's CRC when they are read.
    """
    path = pathlib.Path(path)
    magic, header_bytes, item_bytes = (
        (_IMAGES_MAGIC, IMAGES_HEADER_BYTES, NUM_PIXELS)
        if kind == "images"
        else (_LABELS_MAGIC, LABELS_HEADER_BYTES, 1)
    )
    try:
        with gzip.open(path, "rb") as f:
            header = f.read(header_bytes)
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable gzip file ({e})") from e
    if len(header) < header_bytes:
        raise DataError(f"{path}: header is {len(header)} bytes, expected {header_bytes}")
    found_magic, count = struct.unpack(">II", header[:8])
    if found_magic != magic:
        raise DataError(
            f"{path}: magic number 0x{found_magic:08x}, expected 0x{magic:08x} for an IDX {kind} file"
        )
    if kind == "images":
        rows, cols = struct.unpack(">II", header[8:16])
        if (rows, cols) != IMAGE_SHAPE:
            raise DataError(f"{path}: images are {rows}x{cols}, expected 28x28")
    # gzip's last 4 bytes hold the uncompressed size mod 2**32: a cheap check for truncation.
    with open(path, "rb") as f:
        f.seek(-4, 2)
        (isize,) = struct.unpack("<I", f.read(4))
    expected = (header_bytes + count * item_bytes) % 2**32
    if isize != expected:
        raise DataError(
            f"{path}: gzip holds {isize} bytes, expected {expected} for {count} {kind}: "
            "the file is truncated or corrupt"
        )
    return count


def registered_checksums():
    """File name -> SHA-256 that TFDS registers for fashion_mnist: one source of truth for both sources."""
    import tensorflow_datasets as tfds

    return {info.filename: info.checksum for info in tfds.builder_cls(TFDS_NAME).url_infos.values()}


def sha256(path):
    """Hex SHA-256 of the file at ``path``."""
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def verify_checksum(path, expected=None):
    """DataError unless ``path``'s SHA-256 equals the one TFDS registers for its file name."""
    path = pathlib.Path(path)
    expected = expected or registered_checksums()[path.name]
    found = sha256(path)
    if found != expected:
        raise DataError(
            f"{path}: SHA-256 {found[:16]}... differs from the checksum TFDS registers for {TFDS_NAME} "
            f"({expected[:16]}...): the file is corrupt or not the original: {_fix_hint(path.parent)}"
        )


def _check_labels(path):
    import numpy as np

    labels = np.frombuffer(gzip.open(path).read()[LABELS_HEADER_BYTES:], np.uint8)
    if labels.size and labels.max() >= NUM_CLASSES:
        bad = int(np.argmax(labels >= NUM_CLASSES))
        raise DataError(f"{path}: label {labels[bad]} at index {bad} is out of range 0..{NUM_CLASSES - 1}")


def check_split_files(raw_dir, split):
    """Validate ``split``'s two files (presence, IDX headers, counts, label range, checksum); return paths.

    Cheap, specific checks first so the message says what is wrong; the checksum last catches the rest.
    """
    images_path, labels_path = raw_file_paths(raw_dir, split)
    expected = SPLIT_SIZES[split]
    for path, kind in ((images_path, "images"), (labels_path, "labels")):
        count = read_idx_header(path, kind)
        if count != expected:
            raise DataError(f"{path}: holds {count} items, expected {expected} for the {split} split")
    _check_labels(labels_path)
    checksums = registered_checksums()
    for path in (images_path, labels_path):
        verify_checksum(path, checksums[path.name])
    return images_path, labels_path
