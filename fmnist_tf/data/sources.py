"""Sources of Fashion-MNIST examples: TFDS's ``fashion_mnist`` (built offline) and the raw IDX files.

Every source yields ``(image uint8 [28, 28], label int64)`` in one canonical order: the order in which
TFDS writes ``fashion_mnist`` (an md5 hash of each example's index, salted by the split name). The IDX
source reproduces that order, so one seed gives one train/validation split whichever source is used.

In memory (``load_arrays``), the TFDS source reads its verified array cache (``cache``) when there is one
for TFDS's prepared files, and otherwise makes it; the IDX source reads the files with NumPy.
"""

import functools
import gzip
import hashlib
import pathlib

import numpy as np
import tensorflow as tf
from absl import logging

from fmnist_tf.data import cache
from fmnist_tf.data.files import (
    DEFAULT_RAW_DIR,
    IMAGE_SHAPE,
    IMAGES_HEADER_BYTES,
    LABELS_HEADER_BYTES,
    NUM_PIXELS,
    RAW_FILES,
    SOURCES,
    SPLIT_SIZES,
    TFDS_NAME,
    DataError,
    _fix_hint,
    check_split_files,
    registered_checksums,
)

# Examples at each end of a split compared with TFDS's own decoding before the raw files fill the cache.
CACHE_SAMPLE = 500


@functools.cache
def tfds_order(split, count):
    """The permutation TFDS applies when it writes ``split``: example i goes to position rank(i).

    TFDS sorts examples by md5(split name + str(key)) as a 128-bit integer, and fashion_mnist's keys are
    file indices; fixed-width big-endian digests sort the same way as bytes. Read-only: computed once a process.
    """
    salt = split.encode()
    digests = np.array([hashlib.md5(salt + b"%d" % index).digest() for index in range(count)], dtype="S16")
    order = np.argsort(digests, kind="stable").astype(np.int64)
    order.flags.writeable = False
    return order


def to_file_order(split, *arrays):
    """Reorder arrays from the canonical (TFDS) order back to the order of the original files.

    For order-dependent consumers that must match work done on the original files (the notebook's
    k-fold cross-validation).
    """
    inverse = np.argsort(tfds_order(split, SPLIT_SIZES[split]))
    return tuple(np.asarray(a)[inverse] for a in arrays)


def _check_split_and_source(split, source):
    if split not in RAW_FILES:
        raise ValueError(f"unknown split {split!r}: expected one of {sorted(RAW_FILES)}")
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}: expected one of {', '.join(SOURCES)}")


def _idx_arrays(raw_dir, split):
    """The IDX source in memory: the checked files gunzipped into NumPy, in the canonical order."""
    images_path, labels_path = check_split_files(raw_dir, split)
    count = SPLIT_SIZES[split]
    images = np.frombuffer(gzip.decompress(images_path.read_bytes()), np.uint8, offset=IMAGES_HEADER_BYTES)
    labels = np.frombuffer(gzip.decompress(labels_path.read_bytes()), np.uint8, offset=LABELS_HEADER_BYTES)
    order = tfds_order(split, count)
    return images.reshape(count, *IMAGE_SHAPE)[order], labels.astype(np.int64)[order]


def _idx_dataset(raw_dir, split):
    images_path, labels_path = check_split_files(raw_dir, split)
    count = SPLIT_SIZES[split]
    # One record per example, read as a single batch so decoding is one vectorized op.
    images = tf.data.FixedLengthRecordDataset(
        str(images_path), NUM_PIXELS, header_bytes=IMAGES_HEADER_BYTES, compression_type="GZIP"
    ).batch(count)
    labels = tf.data.FixedLengthRecordDataset(
        str(labels_path), 1, header_bytes=LABELS_HEADER_BYTES, compression_type="GZIP"
    ).batch(count)
    order = tf.constant(tfds_order(split, count))

    def decode(image_records, label_records):
        pixels = tf.reshape(tf.io.decode_raw(image_records, tf.uint8), (-1, *IMAGE_SHAPE))
        classes = tf.cast(tf.reshape(tf.io.decode_raw(label_records, tf.uint8), [-1]), tf.int64)
        return tf.gather(pixels, order), tf.gather(classes, order)

    return (
        tf.data.Dataset.zip(images, labels)
        .map(decode)
        .unbatch()
        .apply(tf.data.experimental.assert_cardinality(count))
    )


def prepare_tfds(raw_dir=DEFAULT_RAW_DIR, tfds_dir=None):
    """Build TFDS's ``fashion_mnist`` offline from the raw files (a no-op once prepared); return the builder.

    TFDS verifies the files against the checksums it registers for the dataset; that check stays on.
    """
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError

    raw_dir = pathlib.Path(raw_dir)
    builder = tfds.builder(TFDS_NAME, data_dir=tfds_dir)
    if builder.is_prepared():
        return builder
    for split in RAW_FILES:
        check_split_files(raw_dir, split)
    config = tfds.download.DownloadConfig(manual_dir=str(raw_dir))
    try:
        builder.download_and_prepare(download_config=config)
    except NonMatchingChecksumError as e:
        # TFDS's message spans lines and names a download URL; keep the file it names.
        culprit = next((name for names in RAW_FILES.values() for name in names if name in str(e)), "a file")
        raise DataError(
            f"{raw_dir / culprit}: checksum differs from the one TFDS registers for {TFDS_NAME}: "
            f"{_fix_hint(raw_dir)}"
        ) from e
    return builder


def _tfds_dataset(builder, split):
    import tensorflow_datasets as tfds

    # One file instruction after the other: TFDS interleaves them by default, which would mix a "+" of slices.
    read_config = tfds.ReadConfig(interleave_cycle_length=1)
    ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False, read_config=read_config)
    return ds.map(lambda image, label: (tf.squeeze(image, -1), label), num_parallel_calls=tf.data.AUTOTUNE)


def load_split(split, source="tfds", raw_dir=DEFAULT_RAW_DIR, tfds_dir=None):
    """``split`` ("train" or "test") as a Dataset of (image uint8 [28, 28], label int64), canonical order."""
    _check_split_and_source(split, source)
    if source == "idx":
        return _idx_dataset(raw_dir, split)
    return _tfds_dataset(prepare_tfds(raw_dir, tfds_dir), split)


def load_arrays(split, source="tfds", raw_dir=DEFAULT_RAW_DIR, tfds_dir=None):
    """``split`` as NumPy (uint8 images [n, 28, 28], int64 labels [n]), canonical order.

    "tfds": from the array cache when it holds TFDS's prepared files' examples (neither TFDS nor a PNG
    decode needed), else prepared and read as ``load_split`` does, then cached. "idx": the checked files.
    """
    _check_split_and_source(split, source)
    if source == "idx":
        return _idx_arrays(raw_dir, split)
    try:
        return cache.read(split, tfds_dir)
    except cache.CacheMiss as miss:
        logging.info("%s: reading %s through TFDS and caching its arrays", miss, TFDS_NAME)
    return cache_tfds_arrays(raw_dir, tfds_dir)[split]


def _raw_arrays_equal_to_tfds(builder, raw_dir):
    """Both splits read from the raw files, or None unless they are what ``builder`` prepared.

    The files are checked against the checksums TFDS registers (so they are the bytes any prepare of this
    dataset read), and the examples at both ends of each split must equal TFDS's own decoding: the
    canonical order is TFDS's writing order, which only TFDS can vouch for.
    """
    try:
        arrays = {split: _idx_arrays(raw_dir, split) for split in RAW_FILES}
    except DataError as e:
        logging.info("raw files not used for the cache: %s", e)
        return None
    # One TFDS read of both ends of both splits: setting up a TFDS pipeline costs more than decoding 2,000 PNGs.
    n, ends = CACHE_SAMPLE, (slice(None, CACHE_SAMPLE), slice(-CACHE_SAMPLE, None))
    sample = to_numpy(_tfds_dataset(builder, "+".join(f"{split}[:{n}]+{split}[-{n}:]" for split in arrays)))
    expected = [np.concatenate([arrays[split][part][end] for split in arrays for end in ends]) for part in (0, 1)]
    if not all(np.array_equal(got, want) for got, want in zip(sample, expected)):
        logging.warning("%s differs between TFDS and the raw files at the ends of a split: caching TFDS's decoding", TFDS_NAME)
        return None
    return arrays


def cache_tfds_arrays(raw_dir=DEFAULT_RAW_DIR, tfds_dir=None):
    """Prepare TFDS's dataset if needed, cache its arrays beside it, and return {split: (images, labels)}.

    The arrays come from the raw files when they are the ones TFDS prepares from and agree with TFDS at
    both ends of each split (0.5 s), else from TFDS's own decoding of its 70,000 PNGs (3-6 s). A folder
    that cannot be written (read-only, remote) only loses the cache.
    """
    builder = prepare_tfds(raw_dir, tfds_dir)
    arrays = _raw_arrays_equal_to_tfds(builder, raw_dir)
    if arrays is None:
        arrays = {split: to_numpy(_tfds_dataset(builder, split)) for split in RAW_FILES}
        provenance = {"from": "TFDS's decoding of its prepared files"}
    else:
        provenance = {
            "from": f"the raw files, equal to TFDS's decoding of the first and last {CACHE_SAMPLE} of each split",
            "raw_sha256": registered_checksums(),
        }
    version_dir = pathlib.Path(builder.data_dir)
    # Only where cache.read looks: a local folder under the TFDS data dir that was asked for.
    if version_dir.is_dir() and version_dir.parent.resolve() == (cache.tfds_data_dir(tfds_dir) / TFDS_NAME).resolve():
        try:
            cache.write(version_dir, arrays, provenance)
        except OSError as e:
            logging.warning("array cache not written in %s (%s): the next run decodes TFDS's files again", version_dir, e)
    return arrays


def to_numpy(ds):
    """All (image, label) pairs of a finite Dataset as two NumPy arrays.

    A reading error that surfaces only while streaming (a TFDS cache damaged after it was prepared)
    becomes a DataError.
    """
    images, labels = [], []
    try:
        for x, y in ds.batch(10_000).as_numpy_iterator():
            images.append(x)
            labels.append(y)
    except tf.errors.OpError as e:
        raise DataError(f"reading the data failed: {e.message.strip().splitlines()[0]}") from e
    return np.concatenate(images), np.concatenate(labels)
