"""TFDS's prepared ``fashion_mnist`` decoded once and kept with tf.data's own ``Dataset.save``, beside the records.

TFDS stores each image as a PNG inside a tf.Example: reading a split decodes one PNG per example, every
epoch. The decoded split is what TFDS yields (``builder.as_dataset``, in its order), batched in blocks of
examples and written with ``Dataset.save`` into ``<data_dir>/fashion_mnist/<version>/fmnist_tf-decoded/<split>-<key>``;
``Dataset.load`` streams it back block by block. Inside TFDS's version folder the copy goes where the data goes:
deleting or re-preparing the dataset deletes it, and ``--tfds_dir`` selects it.

The key names what the copy is valid for: the installed TFDS release, the dataset's version, the block size
and the size and modification time of every file TFDS wrote in the version folder. Rewritten records (a
re-prepare, an edit) change the key, and the next read decodes TFDS's records again. A folder is written
under a temporary name and renamed into place whole, with a manifest of its files' sizes, its example count
and TFDS's facts (shape, class names). What is read back is checked three ways: the files' sizes against the
manifest before reading (a truncated copy is rebuilt), each record's CRC by tf.data while reading, and the
block count at the end of each pass (``assert_cardinality``); a failure while reading becomes a ``DataError``
naming the folder (``sources.Examples.read_error``).

Imports only the standard library here; TensorFlow and TFDS load inside the functions that need them, so
``find`` can tell a prepared dataset without importing TFDS.
"""

import hashlib
import importlib.metadata
import json
import os
import pathlib
import shutil
import time

from fmnist_tf.data.files import TFDS_NAME, DataError

DIRNAME = "fmnist_tf-decoded"
MANIFEST = "fmnist_tf-manifest.json"
FORMAT = 1
# Examples per saved element: a pass over the training split is 60 reads, not 60,000.
BLOCK = 1_000
_TMP_PREFIX = ".tmp-"
# A temporary folder untouched this long belongs to a writer that is gone (a write takes seconds).
_STALE_TMP_SECONDS = 3_600


def tfds_data_dir(tfds_dir=None):
    """The TFDS data dir that ``tfds.builder(..., data_dir=tfds_dir)`` uses: the given one, else TFDS's
    default (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``, as ``tensorflow_datasets.core.constants``)."""
    if tfds_dir:
        return pathlib.Path(tfds_dir)
    return pathlib.Path(os.environ.get("TFDS_DATA_DIR", os.path.join(os.path.expanduser("~"), "tensorflow_datasets")))


def _prepared_files(version_dir):
    """File name -> [size, mtime ns] of every file TFDS wrote in ``version_dir``: any rewrite changes them."""
    stats = ((p.name, p.stat()) for p in sorted(pathlib.Path(version_dir).iterdir()) if p.is_file())
    return {name: [st.st_size, st.st_mtime_ns] for name, st in stats}


def cache_key(version_dir, split):
    """A short hash of what a decoded copy of ``split`` in ``version_dir`` is valid for."""
    version_dir = pathlib.Path(version_dir)
    key = {
        "format": FORMAT,
        "dataset": TFDS_NAME,
        "version": version_dir.name,
        "split": split,
        "block": BLOCK,
        "tfds_release": importlib.metadata.version("tensorflow-datasets"),
        "prepared_files": _prepared_files(version_dir),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _folder(version_dir, split):
    return pathlib.Path(version_dir) / DIRNAME / f"{split}-{cache_key(version_dir, split)}"


def _files(folder):
    """Relative path -> size of every file Dataset.save wrote under ``folder`` (the manifest aside)."""
    return {
        str(path.relative_to(folder)): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }


def _read_manifest(folder):
    """The manifest of a complete copy at ``folder``, or None when it is absent, unreadable or its files differ."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("files") != _files(folder):
        return None
    return manifest


def find(tfds_dir, split):
    """(folder, manifest) of a valid decoded copy of ``split`` under the TFDS data dir, or None. No TFDS import.

    The newest prepared version with a copy whose key matches its files now: the files' sizes are checked,
    their bytes are checked as they are read.
    """
    root = tfds_data_dir(tfds_dir) / TFDS_NAME
    if not root.is_dir():
        return None
    for version_dir in sorted((p for p in root.iterdir() if p.is_dir() and (p / DIRNAME).is_dir()), reverse=True):
        folder = _folder(version_dir, split)
        manifest = _read_manifest(folder) if folder.is_dir() else None
        if manifest is not None:
            return folder, manifest
    return None


def _remove_stale(version_dir, split, keep):
    """Delete other keys' copies of ``split`` and temporary folders whose writer is gone."""
    parent = pathlib.Path(version_dir) / DIRNAME
    now = time.time()
    for path in parent.iterdir():
        stale_tmp = path.name.startswith(_TMP_PREFIX) and now - path.stat().st_mtime > _STALE_TMP_SECONDS
        other_key = path.name.startswith(f"{split}-") and path != keep
        if stale_tmp or other_key:
            shutil.rmtree(path, ignore_errors=True)


def write(builder, split):
    """Decode ``split`` of the prepared TFDS ``builder`` and save it beside its records; return (folder, manifest).

    OSError when the folder cannot be written (the caller then reads TFDS directly).
    """
    import tensorflow as tf

    from fmnist_tf import storage

    if storage.is_url(builder.data_dir):
        # A bucket cannot take a folder renamed into place whole (and pathlib would fold its "//").
        raise OSError(f"{builder.data_dir} is not a local folder")
    version_dir = pathlib.Path(builder.data_dir)
    folder = _folder(version_dir, split)
    folder.parent.mkdir(exist_ok=True)
    _remove_stale(version_dir, split, keep=folder)
    if folder.exists() and _read_manifest(folder) is None:
        shutil.rmtree(folder)  # damaged (a complete copy is renamed into place with its manifest)
    tmp = folder.parent / f"{_TMP_PREFIX}{folder.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    count = builder.info.splits[split].num_examples
    blocks = tfds_blocks(builder, split)
    _check_records(version_dir, split)
    try:
        blocks.save(str(tmp))
    except tf.errors.OpError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(f"{tmp}: {storage.reason(e)}") from e
    features = builder.info.features
    manifest = {
        "files": _files(tmp),
        "examples": count,
        "blocks": -(-count // BLOCK),
        "image_shape": list(features["image"].shape),
        "class_names": list(features["label"].names),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    try:
        tmp.rename(folder)
    except OSError:
        # Another process renamed its complete copy into place first: use that one.
        shutil.rmtree(tmp, ignore_errors=True)
        found = _read_manifest(folder)
        if found is None:
            raise
        manifest = found
    return folder, manifest


def _check_records(version_dir, split):
    """DataError unless every record of ``split``'s files in ``version_dir`` passes its CRC.

    Checked before ``Dataset.save`` reads them: TF 2.21's save waits forever on an input that fails midway, where a
    plain pass raises. A pass over the records without parsing them is a small part of the decoding.
    """
    import tensorflow as tf

    from fmnist_tf import storage

    files = sorted(str(path) for path in pathlib.Path(version_dir).glob(f"{TFDS_NAME}-{split}.tfrecord*"))
    try:
        tf.data.TFRecordDataset(files).reduce(tf.constant(0, tf.int64), lambda count, _: count + 1)
    except tf.errors.DataLossError as e:
        raise DataError(
            f"reading TFDS's records in {version_dir} failed ({storage.reason(e)}): they are "
            f"damaged: delete {version_dir} and run again (it is rebuilt from the shipped files)"
        ) from e


def tfds_blocks(builder, split):
    """``split`` of the prepared ``builder`` as TFDS yields it, in blocks: (uint8 [n, 28, 28], int64 [n])."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    # Files in order, one at a time: the split's order is TFDS's own, the same on every read.
    read_config = tfds.ReadConfig(interleave_cycle_length=1)
    ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False, read_config=read_config)
    return ds.batch(BLOCK).map(lambda images, labels: (tf.squeeze(images, -1), labels))


def load(folder, manifest):
    """The decoded copy at ``folder`` as a Dataset of blocks, in TFDS's order. A damaged record (CRC) or a
    missing block fails the pass that meets it with a tf.errors.OpError (``Examples.read_error`` names it)."""
    import tensorflow as tf

    return tf.data.Dataset.load(str(folder)).apply(tf.data.experimental.assert_cardinality(manifest["blocks"]))
