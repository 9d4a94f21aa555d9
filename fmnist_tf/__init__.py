"""fmnist_tf: train, export and serve a Fashion-MNIST classifier the way TensorFlow's tools expect.

The public API below loads its module (and TensorFlow) on first use, so light submodules such as the
command-line flags and the serving check import quickly.
"""

from fmnist_tf._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("CLASS_NAMES", "DataError", "Examples", "evaluation_data", "load_arrays", "load_examples",
                     "load_split", "load_splits", "normalize", "prepare_tfds", "training_data"), "data"),  # fmt: skip
    "evaluate_saved_model": "evaluation",
    **dict.fromkeys(("ExportError", "export_saved_model"), "serving.export"),
    **dict.fromkeys(("ModelDirError", "resolve_export"), "serving.layout"),
    **dict.fromkeys(("build_model", "make_optimizer"), "model"),
    **dict.fromkeys(("Config", "run"), "training"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
