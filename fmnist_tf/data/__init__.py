"""Fashion-MNIST: the files (``files``), sources in one canonical order (``sources``), the seeded split
(``splits``) and the training/evaluation feeds (``feeds``).

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
    VALIDATION_SIZE,
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
        ("tfds_order", "to_file_order", "prepare_tfds", "load_split", "load_arrays", "cache_tfds_arrays", "to_numpy"),
        "sources",
    ),
    **dict.fromkeys(("validation_mask", "split_train_validation", "load_splits", "load_split_arrays"), "splits"),
    **dict.fromkeys(
        ("normalize", "epoch_order", "epoch_batches", "epoch_index_batches", "epoch_tensors", "evaluation_pipeline"),
        "feeds",
    ),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
