"""A verified copy of the decoded ``fashion_mnist`` arrays, kept inside TFDS's prepared dataset folder.

Reading ``fashion_mnist`` through TFDS decodes 70,000 PNGs one example at a time (3-6 s here) and imports
TFDS (~1 s). The decoded arrays (55 MB of uint8 pixels and int64 labels, canonical order) are kept as raw
bytes beside the TFDS files they copy, in ``<data_dir>/fashion_mnist/<version>/fmnist_tf-arrays/``, with a
JSON manifest recording:

- the key: the dataset's name and version, the installed TFDS release (which fixes the checksums it
  registers for the four source files, and the order it writes), and the size and modification time of
  every file TFDS wrote in that folder: the cache is valid for those prepared files only;
- each array's dtype, shape and SHA-256, checked on every read: a truncated, flipped, resized or swapped
  file is a miss, never data.

Inside the version folder, the cache goes where the data goes: deleting or re-preparing the TFDS dataset
deletes it, ``--tfds_dir`` selects it, and a test's temporary TFDS dir takes its cache with it. Imports
only the standard library and NumPy, so a valid cache is read without TensorFlow Datasets.
"""

import functools
import hashlib
import importlib.metadata
import json
import os
import pathlib

import numpy as np

from fmnist_tf.data.files import IMAGE_SHAPE, SPLIT_SIZES, TFDS_NAME

DIRNAME = "fmnist_tf-arrays"
MANIFEST = "manifest.json"
FORMAT = 1
_TMP_MARK = ".tmp-"  # .<file name>.tmp-<pid>: a write in progress
# name -> (file name, dtype with its byte order, shape): the only arrays a cache holds.
ARRAYS = {
    f"{split}_{part}": (f"{split}-{part}.bin", dtype, (count, *shape))
    for split, count in SPLIT_SIZES.items()
    for part, dtype, shape in (("images", "|u1", IMAGE_SHAPE), ("labels", "<i8", ()))
}


class CacheMiss(Exception):
    """No usable cache: absent, made for other prepared files or another TFDS, or damaged (the reason)."""


def tfds_data_dir(tfds_dir=None):
    """The TFDS data dir that ``tfds.builder(..., data_dir=tfds_dir)`` uses: the given one, else TFDS's
    default (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``, as ``tensorflow_datasets.core.constants``)."""
    if tfds_dir:
        return pathlib.Path(tfds_dir)
    return pathlib.Path(os.environ.get("TFDS_DATA_DIR", os.path.join(os.path.expanduser("~"), "tensorflow_datasets")))


def _sha256(blob):
    return hashlib.sha256(blob).hexdigest()


def prepared_files(version_dir):
    """File name -> [size, mtime in ns] of every file TFDS wrote in ``version_dir`` (records, dataset_info.json...).

    Any re-prepare or rewrite of TFDS's files changes them. Not their SHA-256: hashing TFDS's 38 MB of
    records on every run would cost as much as reading the cache.
    """
    stats = ((path.name, path.stat()) for path in sorted(pathlib.Path(version_dir).iterdir()) if path.is_file())
    return {name: [stat.st_size, stat.st_mtime_ns] for name, stat in stats}


@functools.cache
def _tfds_release():
    return importlib.metadata.version("tensorflow-datasets")


def cache_key(version_dir):
    """What a cache in ``version_dir`` is valid for: dataset, version, TFDS release, the prepared files' sums."""
    version_dir = pathlib.Path(version_dir)
    return {
        "format": FORMAT,
        "dataset": TFDS_NAME,
        "version": version_dir.name,
        "tfds_release": _tfds_release(),
        "prepared_files": prepared_files(version_dir),
    }


def _manifests(tfds_dir):
    root = tfds_data_dir(tfds_dir) / TFDS_NAME
    if not root.is_dir():
        return []
    return sorted(root.glob(f"*/{DIRNAME}/{MANIFEST}"))


def _read_manifest(path):
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CacheMiss(f"{path}: unreadable manifest ({type(e).__name__})") from e
    if not (isinstance(manifest, dict) and isinstance(manifest.get("key"), dict) and isinstance(manifest.get("arrays"), dict)):
        raise CacheMiss(f"{path}: not a manifest of this cache")
    return manifest


def find(tfds_dir=None):
    """The folder of the cache valid for TFDS's prepared files under ``tfds_dir``, else CacheMiss(reason).

    Checks the manifest and the key (the installed TFDS release, the prepared files): cheap, and a valid
    cache also says TFDS's dataset is prepared, without importing TFDS. ``read`` checks the arrays.
    """
    found = _manifests(tfds_dir)
    if not found:
        raise CacheMiss(f"no array cache under {tfds_data_dir(tfds_dir) / TFDS_NAME}")
    release = _tfds_release()
    for path in reversed(found):  # the newest dataset version first
        manifest = _read_manifest(path)
        if manifest["key"].get("tfds_release") == release:
            if manifest["key"] != cache_key(path.parent.parent):
                raise CacheMiss(f"{path.parent}: made for other prepared files than those now in {path.parent.parent}")
            return path.parent
    raise CacheMiss(f"array cache under {tfds_data_dir(tfds_dir) / TFDS_NAME} was made by another TFDS release")


def _read_array(folder, name, entry):
    file_name, dtype, shape = ARRAYS[name]
    if not isinstance(entry, dict) or (entry.get("file"), entry.get("dtype"), entry.get("shape")) != (
        file_name, dtype, list(shape)
    ):
        raise CacheMiss(f"{folder / MANIFEST}: {name} is not recorded as {file_name}, {dtype}, {list(shape)}")
    path = folder / file_name
    array = np.empty(shape, dtype)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size != array.nbytes or f.readinto(memoryview(array.reshape(-1).view(np.uint8))) != size:
                raise CacheMiss(f"{path}: {size} bytes, expected {array.nbytes}")
    except OSError as e:
        raise CacheMiss(f"{path}: unreadable ({e.strerror or e})") from e
    if _sha256(array) != entry.get("sha256"):
        raise CacheMiss(f"{path}: SHA-256 differs from the manifest's")
    return array


def read(split, tfds_dir=None):
    """``split``'s (uint8 images [n, 28, 28], int64 labels [n]) from a valid cache, else CacheMiss(reason).

    Valid: made by the installed TFDS release from exactly the files now in its TFDS folder (``find``),
    and every byte of the two arrays as the manifest recorded.
    """
    folder = find(tfds_dir)
    arrays = _read_manifest(folder / MANIFEST)["arrays"]
    return tuple(_read_array(folder, f"{split}_{part}", arrays.get(f"{split}_{part}")) for part in ("images", "labels"))


def _write_atomically(path, blob):
    tmp = path.with_name(f".{path.name}{_TMP_MARK}{os.getpid()}")
    tmp.write_bytes(blob)
    os.replace(tmp, path)


def _remove_dead_writers_files(folder):
    """Delete temporary files left in ``folder`` by writers that died before renaming them into place."""
    for tmp in folder.glob(f".*{_TMP_MARK}*"):
        try:
            os.kill(int(tmp.name.rsplit(_TMP_MARK, 1)[1]), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except (ValueError, PermissionError):  # not ours, or another user's live process
            pass


def write(version_dir, arrays, provenance):
    """Cache ``arrays`` ({split: (images, labels)}, canonical order) for the TFDS files in ``version_dir``.

    ``provenance`` (JSON-able) records how the arrays were made. The manifest is written last, and a
    reader checks every array against it, so a reader meeting a half-written or racing write sees a miss.
    Returns the cache folder.
    """
    folder = pathlib.Path(version_dir) / DIRNAME
    folder.mkdir(exist_ok=True)
    _remove_dead_writers_files(folder)
    (folder / MANIFEST).unlink(missing_ok=True)
    entries = {}
    for split, (images, labels) in arrays.items():
        for part, array in (("images", images), ("labels", labels)):
            name = f"{split}_{part}"
            file_name, dtype, shape = ARRAYS[name]
            if array.shape != shape or array.dtype != np.dtype(dtype):
                raise ValueError(f"{name} is {array.dtype} {array.shape}, expected {np.dtype(dtype)} {shape}")
            blob = np.ascontiguousarray(array).tobytes()
            _write_atomically(folder / file_name, blob)
            entries[name] = {"file": file_name, "dtype": dtype, "shape": list(shape), "sha256": _sha256(blob)}
    manifest = {"key": cache_key(version_dir), "arrays": entries, "provenance": provenance}
    _write_atomically(folder / MANIFEST, json.dumps(manifest, indent=1).encode())
    return folder
