"""Sources of Fashion-MNIST examples: TFDS's ``fashion_mnist`` (built offline) and the raw IDX files.

Every source yields ``(image uint8 [28, 28], label int64)`` in one canonical order: the order in which
TFDS writes ``fashion_mnist`` (an md5 hash of each example's index, salted by the split name). The IDX
source reproduces that order, so one seed gives one train/validation split whichever source is used.
"""

import hashlib
import pathlib

import numpy as np
import tensorflow as tf

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
)


def tfds_order(split, count):
    """The permutation TFDS applies when it writes ``split``: example i goes to position rank(i).

    TFDS sorts examples by md5(split name + str(key)), and fashion_mnist's keys are file indices.
    """
    salt = hashlib.md5(split.encode())

    def key(index):
        h = salt.copy()
        h.update(str(index).encode())
        return h.digest()

    return np.array(sorted(range(count), key=key), dtype=np.int64)


def to_file_order(split, *arrays):
    """Reorder arrays from the canonical (TFDS) order back to the order of the original files.

    For order-dependent consumers that must match work done on the original files (the notebook's
    k-fold cross-validation).
    """
    inverse = np.argsort(tfds_order(split, SPLIT_SIZES[split]))
    return tuple(np.asarray(a)[inverse] for a in arrays)


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


def load_split(split, source="tfds", raw_dir=DEFAULT_RAW_DIR, tfds_dir=None):
    """``split`` ("train" or "test") as a Dataset of (image uint8 [28, 28], label int64), canonical order."""
    if split not in RAW_FILES:
        raise ValueError(f"unknown split {split!r}: expected one of {sorted(RAW_FILES)}")
    if source == "idx":
        return _idx_dataset(raw_dir, split)
    if source != "tfds":
        raise ValueError(f"unknown source {source!r}: expected one of {', '.join(SOURCES)}")
    builder = prepare_tfds(raw_dir, tfds_dir)
    ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
    return ds.map(lambda image, label: (tf.squeeze(image, -1), label), num_parallel_calls=tf.data.AUTOTUNE)


def load_arrays(split, source="tfds", raw_dir=DEFAULT_RAW_DIR, tfds_dir=None):
    """``split`` as NumPy (uint8 images [n, 28, 28], int64 labels [n]), canonical order."""
    return to_numpy(load_split(split, source, raw_dir, tfds_dir))


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
