"""Sources of Fashion-MNIST examples, streamed as tf.data blocks: TFDS's ``fashion_mnist`` and the raw IDX files.

Both give ``Examples``: a Dataset of blocks (uint8 images [n, 28, 28], int64 labels [n]) in the source's own
order, with the count, and where they are read from. The TFDS source is what TFDS yields from its prepared
records (built offline from the shipped files, then decoded once, ``decoded``); the IDX source streams the
``.gz`` files with ``FixedLengthRecordDataset``, one record per block, in the files' order.
"""

import dataclasses
import functools
import hashlib
import pathlib

import numpy as np
import tensorflow as tf
from absl import logging

from fmnist_tf import storage
from fmnist_tf.data import decoded
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

# tf.data traces its functions through autograph; data/'s have no Python control flow on tensors, so the source
# conversion would only add to the tracing that every run pays before its first step.
plain_function = tf.autograph.experimental.do_not_convert

# What a damaged or vanished source raises while tf.data reads it: a record's CRC, a file gone, fewer blocks
# than recorded (assert_cardinality). Other errors of a training step are not the data's.
READ_ERRORS = (tf.errors.DataLossError, tf.errors.NotFoundError, tf.errors.FailedPreconditionError)


@dataclasses.dataclass(frozen=True)
class Examples:
    """A stream of examples: ``blocks`` (uint8 [n, 28, 28], int64 [n]) of at most ``block`` examples, ``count``
    in all, read from ``origin`` (named when reading fails)."""

    blocks: tf.data.Dataset
    count: int
    origin: str
    block: int = decoded.BLOCK

    def read_error(self, error):
        """The ``DataError`` for a tf.data reading ``error`` (a damaged record, a missing block) of these examples."""
        return DataError(
            f"reading {self.origin} failed ({storage.reason(error)}): the data there is damaged: delete it "
            "(prepared data is rebuilt from the shipped files on the next run) or restore the files"
        )


def _check_split_and_source(split, source):
    if split not in RAW_FILES:
        raise ValueError(f"unknown split {split!r}: expected one of {sorted(RAW_FILES)}")
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}: expected one of {', '.join(SOURCES)}")


def _idx_block(count):
    """The largest number of examples <= decoded.BLOCK that divides ``count``: records of whole blocks."""
    return next(size for size in range(min(decoded.BLOCK, count), 0, -1) if count % size == 0)


def idx_examples(raw_dir, split):
    """``split`` of the checked IDX files, streamed from the .gz files in their order."""
    images_path, labels_path = check_split_files(raw_dir, split)
    count = SPLIT_SIZES[split]
    block = _idx_block(count)
    images = tf.data.FixedLengthRecordDataset(
        str(images_path), NUM_PIXELS * block, header_bytes=IMAGES_HEADER_BYTES, compression_type="GZIP"
    )
    labels = tf.data.FixedLengthRecordDataset(
        str(labels_path), block, header_bytes=LABELS_HEADER_BYTES, compression_type="GZIP"
    )

    @plain_function
    def decode(image_record, label_record):
        pixels = tf.reshape(tf.io.decode_raw(image_record, tf.uint8), (-1, *IMAGE_SHAPE))
        return pixels, tf.cast(tf.io.decode_raw(label_record, tf.uint8), tf.int64)

    blocks = (
        tf.data.Dataset.zip(images, labels)
        .map(decode)
        .apply(tf.data.experimental.assert_cardinality(count // block))
    )
    return Examples(blocks, count, f"{images_path} and {labels_path}", block)


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


def tfds_examples(split, raw_dir=DEFAULT_RAW_DIR, tfds_dir=None):
    """``split`` as TFDS yields it from its prepared records, streamed from their decoded copy.

    The copy (``decoded``) is read without importing TFDS while it matches TFDS's files; otherwise TFDS is
    prepared if needed and the copy made. Where it cannot be written (a read-only or remote TFDS dir),
    TFDS's records are read directly, decoding every image on every pass.
    """
    found = decoded.find(tfds_dir, split)
    if found is None:
        builder = prepare_tfds(raw_dir, tfds_dir)
        if not builder.info.splits[split].num_examples:
            raise DataError(f"{builder.data_dir}: TFDS's {TFDS_NAME} has no {split} examples: delete it and run again")
        try:
            found = decoded.write(builder, split)
        except OSError as e:
            logging.warning("decoded copy not written (%s): reading TFDS's records, decoding each image", e)
            count = builder.info.splits[split].num_examples
            return Examples(decoded.tfds_blocks(builder, split), count, builder.data_dir)
    folder, manifest = found
    if tuple(manifest["image_shape"][:2]) != IMAGE_SHAPE:
        raise DataError(f"{folder}: TFDS's images are {manifest['image_shape']}, expected {list(IMAGE_SHAPE)}")
    return Examples(decoded.load(folder, manifest), manifest["examples"], str(folder))


def load_examples(split, source="tfds", raw_dir=DEFAULT_RAW_DIR, tfds_dir=None):
    """``split`` ("train" or "test") of ``source`` as ``Examples``."""
    _check_split_and_source(split, source)
    if source == "idx":
        return idx_examples(raw_dir, split)
    return tfds_examples(split, raw_dir, tfds_dir)


def _blocks_of(ds):
    """(``ds`` in blocks, whether it was already): a Dataset of single examples is batched into blocks."""
    is_blocks = ds.element_spec[0].shape.rank == len(IMAGE_SHAPE) + 1
    return (ds if is_blocks else ds.batch(decoded.BLOCK)), is_blocks


def as_examples(ds, origin):
    """A caller's Dataset as ``Examples``: of single examples (image [28, 28], label) batched into blocks, or of
    blocks already ([n, 28, 28], [n]). Its size is its cardinality, or counted in one pass when unknown."""
    blocks, is_blocks = _blocks_of(ds)
    blocks = blocks.map(lambda images, labels: (tf.cast(images, tf.uint8), tf.cast(labels, tf.int64)))
    count = -1 if is_blocks else int(ds.cardinality())
    if count < 0:
        count = int(blocks.reduce(tf.constant(0, tf.int64), lambda n, block: n + tf.shape(block[1], tf.int64)[0]))
    return Examples(blocks, count, origin)


def load_split(split, source="tfds", raw_dir=DEFAULT_RAW_DIR, tfds_dir=None):
    """``split`` as a Dataset of single examples (image uint8 [28, 28], label int64), in the source's order."""
    return load_examples(split, source, raw_dir, tfds_dir).blocks.unbatch()


def to_numpy(examples):
    """All examples of ``Examples`` (or a Dataset of single examples or of blocks) as two NumPy arrays.

    A reading error that surfaces only while streaming (a damaged record) becomes a DataError.
    """
    blocks = examples.blocks if isinstance(examples, Examples) else _blocks_of(examples)[0]
    images, labels = [], []
    try:
        for x, y in blocks.as_numpy_iterator():
            images.append(x)
            labels.append(y)
    except READ_ERRORS as e:
        if isinstance(examples, Examples):
            raise examples.read_error(e) from e
        raise DataError(f"reading the data failed: {storage.reason(e)}") from e
    return np.concatenate(images), np.concatenate(labels)


def load_arrays(split, source="tfds", raw_dir=DEFAULT_RAW_DIR, tfds_dir=None):
    """``split`` in memory, as NumPy (uint8 images [n, 28, 28], int64 labels [n]) in the source's order: for
    consumers that need arrays (scikit-learn, plots, the test set of an evaluation)."""
    return to_numpy(load_examples(split, source, raw_dir, tfds_dir))


@functools.cache
def tfds_order(split, count):
    """The permutation TFDS applies when it writes ``split``: example i of the files goes to position rank(i).

    TFDS sorts examples by md5(split name + str(key)) as a 128-bit integer, and fashion_mnist's keys are
    file indices. Only for consumers that must match work done on the original files (the notebook's k-fold
    cross-validation, its first picture); training never needs it.
    """
    salt = split.encode()
    digests = np.array([hashlib.md5(salt + b"%d" % index).digest() for index in range(count)], dtype="S16")
    order = np.argsort(digests, kind="stable").astype(np.int64)
    order.flags.writeable = False
    return order


def load_arrays_in_file_order(split, source="tfds", raw_dir=DEFAULT_RAW_DIR, tfds_dir=None):
    """``load_arrays`` in the original files' order, whichever the source."""
    images, labels = load_arrays(split, source, raw_dir, tfds_dir)
    if source == "idx":
        return images, labels
    inverse = np.argsort(tfds_order(split, len(labels)))
    return images[inverse], labels[inverse]
