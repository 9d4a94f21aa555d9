"""fmnist_tf: train, export and serve a Fashion-MNIST classifier the way TensorFlow's tools expect."""

from fmnist_tf.data import (
    CLASS_NAMES,
    DataError,
    evaluation_pipeline,
    load_arrays,
    load_split,
    load_split_arrays,
    load_splits,
    normalize,
    prepare_tfds,
)
from fmnist_tf.evaluation import ModelDirError, evaluate_saved_model
from fmnist_tf.export import ExportError, export_saved_model, latest_version_path
from fmnist_tf.model import build_model, make_optimizer
from fmnist_tf.training import Config, run

__all__ = [
    "CLASS_NAMES",
    "Config",
    "DataError",
    "ExportError",
    "ModelDirError",
    "build_model",
    "evaluate_saved_model",
    "evaluation_pipeline",
    "export_saved_model",
    "latest_version_path",
    "load_arrays",
    "load_split",
    "load_split_arrays",
    "load_splits",
    "make_optimizer",
    "normalize",
    "prepare_tfds",
    "run",
]
