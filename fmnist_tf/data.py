"""Fashion-MNIST sources and tf.data pipelines.

Every source yields ``(image uint8 [28, 28], label int64)`` in one canonical order: the order in which
TFDS writes ``fashion_mnist`` (an md5 hash of each example's index, salted by the split name). The IDX
source reproduces that order, so one seed gives one train/validation split whichever source is used.
"""

import gzip
import hashlib
import pathlib
import struct

import numpy as np
import tensorflow as tf

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

# The shipped copy of Zalando's files; the offline default for both sources.
DEFAULT_RAW_DIR = pathlib.Path(__file__).resolve().parent.parent / "data" / "fashion-mnist"

# split -> (images file, labels file), the names TFDS's manual_dir expects too.
RAW_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
SPLIT_SIZES = {"train": 60_000, "test": 10_000}
VALIDATION_SIZE = 12_000

_IMAGES_MAGIC = 0x00000803
_LABELS_MAGIC = 0x00000801
_IMAGES_HEADER_BYTES = 16
_LABELS_HEADER_BYTES = 8


class DataError(ValueError):
    """A data file or folder is missing or does not hold what Fashion-MNIST should."""


def normalize(images):
    """uint8 pixels [..., 28, 28] -> float32 in [0, 1], flattened to [..., 784].

    The one definition of preprocessing: the training pipelines and every serving signature call it.
    """
    images = tf.convert_to_tensor(images)
    pixels = tf.cast(images, tf.float32) / 255.0
    return tf.reshape(pixels, tf.concat([tf.shape(images)[:-2], [NUM_PIXELS]], axis=0))


def _fix_hint(raw_dir):
    return (
        f"restore the four original Fashion-MNIST .gz files in {raw_dir} "
        f"(the project ships them in {DEFAULT_RAW_DIR}; check with `sha256sum -c SHA256SUMS` there) "
        "or pass another folder"
    )


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
    are checked by gzip's CRC when tf.data streams them.
    """
    path = pathlib.Path(path)
    magic, header_bytes, item_bytes = (
        (_IMAGES_MAGIC, _IMAGES_HEADER_BYTES, NUM_PIXELS)
        if kind == "images"
        else (_LABELS_MAGIC, _LABELS_HEADER_BYTES, 1)
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


def verify_checksum(path, expected=None):
    """DataError unless ``path``'s SHA-256 equals the one TFDS registers for its file name."""
    path = pathlib.Path(path)
    expected = expected or registered_checksums()[path.name]
    found = hashlib.sha256(path.read_bytes()).hexdigest()
    if found != expected:
        raise DataError(
            f"{path}: SHA-256 {found[:16]}... differs from the checksum TFDS registers for {TFDS_NAME} "
            f"({expected[:16]}...): the file is corrupt or not the original: {_fix_hint(path.parent)}"
        )


def _check_labels(path):
    labels = np.frombuffer(gzip.open(path).read()[_LABELS_HEADER_BYTES:], np.uint8)
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
        str(images_path), NUM_PIXELS, header_bytes=_IMAGES_HEADER_BYTES, compression_type="GZIP"
    ).batch(count)
    labels = tf.data.FixedLengthRecordDataset(
        str(labels_path), 1, header_bytes=_LABELS_HEADER_BYTES, compression_type="GZIP"
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


def validation_mask(seed, total=SPLIT_SIZES["train"], validation_size=VALIDATION_SIZE):
    """Boolean [total] array, True for the ``validation_size`` examples the seed holds out."""
    mask = np.zeros(total, dtype=bool)
    mask[np.random.default_rng(seed).permutation(total)[:validation_size]] = True
    return mask


def split_train_validation(train, seed):
    """Split the 60,000-example train Dataset into seeded (48,000 train, 12,000 validation) Datasets.

    Each part keeps the canonical order; the training pipeline shuffles. The selection is one gather over
    the whole split (47 MB) rather than a per-example filter, which cost 1.2 s per pass here.
    """
    mask = validation_mask(seed)

    def part(keep_validation):
        index = tf.constant(np.flatnonzero(mask == keep_validation))
        return (
            train.batch(len(mask))
            .map(lambda x, y: (tf.gather(x, index), tf.gather(y, index)))
            .unbatch()
            .apply(tf.data.experimental.assert_cardinality(len(index)))
        )

    return part(False), part(True)


def load_splits(seed, source="tfds", raw_dir=DEFAULT_RAW_DIR, tfds_dir=None):
    """Dict of raw (image, label) Datasets: "train" (48,000), "validation" (12,000), "test" (10,000)."""
    train, validation = split_train_validation(load_split("train", source, raw_dir, tfds_dir), seed)
    return {"train": train, "validation": validation, "test": load_split("test", source, raw_dir, tfds_dir)}


def load_arrays(split, source="tfds", raw_dir=DEFAULT_RAW_DIR, tfds_dir=None):
    """``split`` as NumPy (uint8 images [n, 28, 28], int64 labels [n]), canonical order."""
    return to_numpy(load_split(split, source, raw_dir, tfds_dir))


def load_split_arrays(seed, source="tfds", raw_dir=DEFAULT_RAW_DIR, tfds_dir=None):
    """``load_splits`` in memory: {"train", "validation", "test"} -> (images, labels) NumPy arrays."""
    images, labels = load_arrays("train", source, raw_dir, tfds_dir)
    mask = validation_mask(seed, len(labels))
    return {
        "train": (images[~mask], labels[~mask]),
        "validation": (images[mask], labels[mask]),
        "test": load_arrays("test", source, raw_dir, tfds_dir),
    }


def _normalize_batch(images, labels):
    return normalize(images), labels


def epoch_order(num_examples, seed, epoch):
    """The training order of one epoch: a permutation that is a pure function of (seed, epoch).

    Not a stateful ``shuffle``: a run resumed at epoch k sees exactly the batches an uninterrupted run
    sees at epoch k, and every worker of a cluster computes the same order without talking.
    """
    return tf.random.experimental.stateless_shuffle(
        tf.range(num_examples, dtype=tf.int64), seed=tf.constant([seed, epoch], tf.int64)
    )


def epoch_batches(images, labels, batch_size, seed, epoch, num_slices=1, first_slice=0, local_slices=1):
    """One epoch of normalized training batches for replicas, from in-memory uint8 images, int64 labels.

    ``batch_size`` is the global batch: step s takes examples [s*batch_size, (s+1)*batch_size) of
    ``epoch_order``. Each global batch is cut into ``num_slices`` equal slices, one per replica, and this
    input pipeline yields slices ``first_slice`` .. ``first_slice + local_slices - 1`` of each step in
    turn (its local replicas): all replicas together take exactly the single-machine steps. A final
    partial global batch is dropped, since replicas need equal, statically shaped slices.
    """
    num_examples = int(labels.shape[0])
    if batch_size % num_slices:
        raise ValueError(f"batch_size {batch_size} is not divisible by the {num_slices} replicas")
    full_steps, slice_size = num_examples // batch_size, batch_size // num_slices
    order = epoch_order(num_examples, seed, epoch)[: full_steps * batch_size]
    # [step, replica, example] -> this pipeline's replicas' slices, in step order.
    index = tf.reshape(order, [full_steps, num_slices, slice_size])[:, first_slice : first_slice + local_slices]
    return (
        tf.data.Dataset.from_tensor_slices(tf.reshape(index, [-1, slice_size]))
        .map(lambda i: (normalize(tf.gather(images, i)), tf.gather(labels, i)))
        .prefetch(tf.data.AUTOTUNE)
    )


def epoch_tensors(images, labels, batch_size, seed, epoch):
    """``epoch_batches`` for one replica as whole tensors: [(x [steps, b, 784], y [steps, b])], then the
    final partial batch as one more [1, rest, ...] pair when the batch size does not divide the data."""
    num_examples = int(labels.shape[0])
    order = epoch_order(num_examples, seed, epoch)
    full = num_examples // batch_size * batch_size
    parts = [(order[:full], [-1, batch_size]), (order[full:], [1, -1])]
    return [
        (tf.reshape(normalize(tf.gather(images, index)), [*shape, NUM_PIXELS]), tf.reshape(tf.gather(labels, index), shape))
        for index, shape in parts
        if index.shape[0]
    ]


def evaluation_pipeline(ds, batch_size):
    """batch -> normalize -> cache -> prefetch, in order, no shuffle (the TFDS guide's eval pipeline)."""
    return (
        ds.batch(batch_size)
        .map(_normalize_batch, num_parallel_calls=tf.data.AUTOTUNE)
        .cache()
        .prefetch(tf.data.AUTOTUNE)
    )


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
