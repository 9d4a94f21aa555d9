"""LiteRT (formerly TensorFlow Lite) models from an export, for phones and small boards: float32 and int8.

Both models have one signature, ``serving_default``, taking what the export's takes, ``images`` (raw
uint8 pixels ``[n, 28, 28]``, the normalization inside the graph), and returning only ``probabilities``
(float32 ``[n, 10]``). The export's ``class_id`` and ``class_name`` are left out: the converter would keep
the string lookup (checked), but a .tflite of numbers only is what every LiteRT client reads the same way,
one float array; ``class_id`` is its argmax and the class names travel beside the models in
``labels.txt``, one per line in class-id order.

The int8 model is full-integer post-training quantization: weights and activations in int8, calibrated on
a seeded sample of training images (never test images); its input stays raw uint8 pixels and its output
is dequantized to float, so a client treats both models alike.
"""

import pathlib
import tempfile
import time
import warnings

import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from fmnist_tf import data, storage
from fmnist_tf.serving import client, layout
from fmnist_tf.serving.signatures import SERVING_DEFAULT, SIGNATURE_INPUTS

MODEL_FILES = {"float32": "model_float32.tflite", "int8": "model_int8.tflite"}
LABELS_FILE = "labels.txt"
INPUT_NAME = SIGNATURE_INPUTS[SERVING_DEFAULT]
LITE_OUTPUT = layout.PROBABILITIES  # a LiteRT model's serving_default returns only these (names: labels.txt)
# Calibration sample: 500 images gave the same int8 accuracy as more here, and calibration runs them one by one.
REPRESENTATIVE_EXAMPLES = 500
LATENCY_CALLS = 500


def load_lite_model(path):
    """The serving_default signature runner of the LiteRT model at ``path`` (a .tflite file from ``lite``)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise layout.ModelDirError(f"LiteRT model {path} does not exist or is not a file")
    try:
        interpreter = Interpreter(model_path=str(path))
    except (ValueError, RuntimeError) as e:
        raise layout.ModelDirError(f"{path}: not a LiteRT model: {storage.reason(e)}") from e
    signatures = interpreter.get_signature_list()
    expected = {"inputs": [INPUT_NAME], "outputs": [LITE_OUTPUT]}
    if signatures.get(SERVING_DEFAULT) != expected:
        raise layout.ModelDirError(
            f"{path}: expected a {SERVING_DEFAULT} signature {expected}, found {signatures or 'none'}"
        )
    return interpreter.get_signature_runner(SERVING_DEFAULT)


def predict_lite_classes(runner, images):
    """The argmax class of the LiteRT signature ``runner``'s probabilities for each uint8 [n, 28, 28] image."""
    # The runner resizes its input to each batch (the last may be shorter).
    batches = (
        np.argmax(runner(**{INPUT_NAME: batch})[LITE_OUTPUT], axis=-1) for batch in layout.request_batches(images)
    )
    return np.concatenate(list(batches)).astype(np.int64)


class OutDirError(OSError):
    """The folder for the LiteRT models cannot be written."""


class _ProbabilitiesOnly(tf.Module):
    """An export's serving_default cut to its one float output, the probabilities."""

    def __init__(self, version_dir):
        super().__init__()
        # Kept as an attribute so the SavedModel's variables are tracked and saved with this wrapper.
        self.saved_model = tf.saved_model.load(str(version_dir))
        self._serve = self.saved_model.signatures[SERVING_DEFAULT]

    @tf.function(input_signature=[tf.TensorSpec([None, *data.IMAGE_SHAPE], tf.uint8, name=INPUT_NAME)])
    def probabilities(self, images):
        return {LITE_OUTPUT: self._serve(**{INPUT_NAME: images})[LITE_OUTPUT]}


def check_out_dir(out_dir):
    """Create ``out_dir`` if needed; OutDirError with the reason when it cannot be written."""
    try:
        return storage.ensure_writable_dir(out_dir)
    except OSError as e:
        raise OutDirError(f"out dir {out_dir} cannot be written: {storage.reason(e)}") from e


def representative_images(train_images, count=REPRESENTATIVE_EXAMPLES, seed=42):
    """A seeded sample of ``count`` of the uint8 ``train_images``, in their order: the int8 calibration set."""
    rng = np.random.default_rng(seed)
    return train_images[np.sort(rng.choice(len(train_images), size=count, replace=False))]


def convert(version_dir, representative):
    """{"float32": bytes, "int8": bytes}: the .tflite models of the export at ``version_dir``.

    ``version_dir`` must hold a SavedModel with serving_default (``client.load_serving_default``
    checks it); ``representative`` (uint8 [n, 28, 28]) calibrates the int8 model's activation ranges.
    """
    module = _ProbabilitiesOnly(version_dir)
    with tempfile.TemporaryDirectory() as tmp:
        # Saved again, cut to the probabilities, so the converter sees one named signature to keep.
        tf.saved_model.save(module, tmp, signatures={SERVING_DEFAULT: module.probabilities})
        models = {"float32": tf.lite.TFLiteConverter.from_saved_model(tmp).convert()}
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ({INPUT_NAME: image[None]} for image in representative)
        # Integer kernels only: conversion fails rather than leave a float op behind.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        # inference_output_type stays float32: the probabilities leave the model dequantized.
        with warnings.catch_warnings():
            # The converter calibrates with TF's own (deprecated) interpreter and warns about it; nothing to act on.
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated", category=UserWarning)
            models["int8"] = converter.convert()
    return models


def write_models(version_dir, out_dir, representative):
    """Write model_float32.tflite, model_int8.tflite and labels.txt to ``out_dir``; return their paths.

    Returns ({"float32": path, "int8": path}, labels path).
    """
    out_dir = check_out_dir(out_dir)
    paths = {
        kind: storage.replace_file(out_dir / MODEL_FILES[kind], content)
        for kind, content in convert(version_dir, representative).items()
    }
    labels = storage.replace_file(out_dir / LABELS_FILE, "".join(f"{name}\n" for name in data.CLASS_NAMES).encode())
    return paths, labels


def latency_ms_p50(runner, image, calls=LATENCY_CALLS, warmup=20):
    """Median milliseconds of one call of the LiteRT signature ``runner`` on one uint8 [28, 28] ``image``."""
    batch = {INPUT_NAME: np.asarray(image, np.uint8)[None]}
    for _ in range(warmup):
        runner(**batch)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        runner(**batch)
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.percentile(times, 50))


def measure(path, images, labels, reference):
    """Figures of the .tflite model at ``path``: bytes, test accuracy, agreement with ``reference`` classes, latency."""
    runner = load_lite_model(path)
    predictions = predict_lite_classes(runner, images)
    return {
        "path": str(path),
        "bytes": pathlib.Path(path).stat().st_size,
        "test_accuracy": float(np.mean(predictions == labels)),
        "agreement": float(np.mean(predictions == reference)),
        "latency_ms_p50": latency_ms_p50(runner, images[0]),
    }


def export_lite(model_dir, out_dir, source="tfds", raw_dir=data.DEFAULT_RAW_DIR, tfds_dir=None, seed=42,
                representative_count=REPRESENTATIVE_EXAMPLES):  # fmt: skip
    """Convert the export at ``model_dir`` (a version folder or a base path) to LiteRT and measure both models.

    Writes the two models and labels.txt to ``out_dir``. Returns {"saved_model": {"path", "test_accuracy"},
    "labels": path, "float32": figures, "int8": figures}, each model's figures from ``measure`` against the
    SavedModel's own serving_default classes on the 10,000 test images. ``seed`` picks the
    ``representative_count`` training images that calibrate the int8 model.
    """
    version, signature = client.load_serving_default(model_dir)
    check_out_dir(out_dir)  # before the minutes of work, not after
    train_images, _ = data.load_arrays("train", source, raw_dir, tfds_dir)
    images, labels = data.load_arrays("test", source, raw_dir, tfds_dir)
    reference = client.predict_classes(signature, images)
    paths, labels_path = write_models(version, out_dir, representative_images(train_images, representative_count, seed))
    figures = {
        "saved_model": {"path": str(version), "test_accuracy": float(np.mean(reference == labels))},
        "labels": str(labels_path),
    }
    for kind, path in paths.items():
        figures[kind] = measure(path, images, labels, reference)
    return figures
