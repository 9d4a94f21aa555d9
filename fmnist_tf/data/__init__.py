"""Fashion-MNIST as tf.data: the files (``files``), the sources (``sources``: TFDS's records, decoded once by
``decoded``, or the IDX files), the seeded split (``splits``), the input pipelines (``pipeline``) and the
training-time augmentation (``augmentation``).

Every public name is importable from here; the light facts (class names, shapes, the shipped folder)
come without TensorFlow, the rest load their module on first use.
"""

from fmnist_tf._lazy import lazy_exports
from fmnist_tf.data.files import (  # noqa: F401  (re-exported: the dataset's facts, TF-free)
    CLASS_NAMES,
    DEFAULT_RAW_DIR,
    IMAGE_SHAPE,
    NUM_CLASSES,
    NUM_PIXELS,
    RAW_FILES,
    SOURCES,
    SPLIT_SIZES,
    TFDS_NAME,
    DataError,
    check_raw_dir,
    check_split_files,
    raw_file_paths,
    read_idx_header,
    registered_checksums,
    sha256,
    verify_checksum,
)

_EXPORTS = {
    **dict.fromkeys(
        ("Examples", "READ_ERRORS", "plain_function", "as_examples", "idx_examples", "tfds_examples", "load_examples",
         "load_split", "load_arrays", "load_arrays_in_file_order", "tfds_order", "prepare_tfds", "to_numpy"),
        "sources",
    ),  # fmt: skip
    **dict.fromkeys(("VALIDATION_FRACTION", "validation_mask", "select", "split_train_validation", "load_splits"), "splits"),
    **dict.fromkeys(
        ("normalize", "window_key", "epoch_order", "shuffled", "chunks_per_epoch", "training_data", "evaluation_data"),
        "pipeline",
    ),  # fmt: skip
    **dict.fromkeys(("MAX_SHIFT", "augment", "chunk_key"), "augmentation"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
