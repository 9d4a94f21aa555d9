"""SavedModel export in TF Serving's layout: signatures, versions, atomic writes, config, warmup.

A base path holds integer-named version folders (``<base>/1``, ``<base>/2``...). TF Serving polls it and
loads any all-digit folder it sees, so a version is written beside the base path's versions under a
name that is not all digits, then renamed into place in one step once complete.
"""

import os
import pathlib
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from fmnist_tf.data import CLASS_NAMES, IMAGE_SHAPE, NUM_PIXELS, normalize

# Signature names and their input names: what TF Serving clients put in their requests.
SERVING_DEFAULT = "serving_default"  # uint8 [None, 28, 28] raw pixels
SERVING_NORMALIZED = "serving_normalized"  # float32 [None, 784], the notebook model's own input
SERVING_PNG = "serving_png"  # string [None] encoded 28x28 grayscale PNGs ({"b64": ...} over REST)
SIGNATURE_INPUTS = {SERVING_DEFAULT: "images", SERVING_NORMALIZED: "pixels", SERVING_PNG: "png_bytes"}
OUTPUT_NAMES = ("probabilities", "class_id", "class_name")
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
TMP_PREFIX = ".tmp-"


class ExportError(OSError):
    """The export base path cannot be used."""


def _outputs(probabilities):
    class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
    return {
        "probabilities": probabilities,
        "class_id": class_id,
        "class_name": tf.gather(tf.constant(CLASS_NAMES), class_id),
    }


def _decode_png(png):
    # channels=0 keeps the PNG's own channels, so a colour image is refused rather than silently converted.
    image = tf.ensure_shape(tf.io.decode_png(png, channels=0), [*IMAGE_SHAPE, 1], name="png_must_be_28x28_grayscale")
    return tf.reshape(image, IMAGE_SHAPE)


def serving_functions(model):
    """Signature name -> tf.function, each ending in the Keras model with preprocessing in the graph."""

    @tf.function(input_signature=[tf.TensorSpec([None, *IMAGE_SHAPE], tf.uint8, name="images")])
    def serve_images(images):
        # ensure_shape: a bad request fails here with the expected shape in the message, not deep inside.
        images = tf.ensure_shape(images, [None, *IMAGE_SHAPE], name="images_must_be_batch_x_28_x_28")
        return _outputs(model(normalize(images), training=False))

    @tf.function(input_signature=[tf.TensorSpec([None, NUM_PIXELS], tf.float32, name="pixels")])
    def serve_normalized(pixels):
        pixels = tf.ensure_shape(pixels, [None, NUM_PIXELS], name="pixels_must_be_batch_x_784")
        return _outputs(model(pixels, training=False))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="png_bytes")])
    def serve_png(png_bytes):
        images = tf.map_fn(
            _decode_png, png_bytes, fn_output_signature=tf.TensorSpec(IMAGE_SHAPE, tf.uint8)
        )
        return _outputs(model(normalize(images), training=False))

    return {SERVING_DEFAULT: serve_images, SERVING_NORMALIZED: serve_normalized, SERVING_PNG: serve_png}


def versions(base_path):
    """Sorted integer versions under ``base_path`` (TF Serving's rule: all-digit folder names only)."""
    base_path = pathlib.Path(base_path)
    if not base_path.is_dir():
        return []
    return sorted(int(p.name) for p in base_path.iterdir() if p.name.isdigit() and p.is_dir())


def latest_version_path(base_path):
    """The highest version folder under ``base_path``, or None when there is none."""
    found = versions(base_path)
    return pathlib.Path(base_path) / str(found[-1]) if found else None


def check_writable(base_path):
    """Create ``base_path`` if needed; ExportError with the reason when it cannot be written."""
    base_path = pathlib.Path(base_path)
    try:
        base_path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=base_path):
            pass
    except OSError as e:
        raise ExportError(f"export dir {base_path} cannot be written: {e.strerror or e}") from e
    return base_path


def encode_png(image):
    """uint8 [28, 28] array -> PNG bytes, the format the serving_png signature takes."""
    return tf.io.encode_png(tf.expand_dims(tf.convert_to_tensor(image, tf.uint8), -1)).numpy()


def warmup_requests(model_name, images):
    """One PredictionLog per signature for ``images`` (uint8 [n, 28, 28]), as TF Serving replays them."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    images = np.asarray(images, dtype=np.uint8)
    inputs = {
        SERVING_DEFAULT: images,
        SERVING_NORMALIZED: normalize(images).numpy(),
        SERVING_PNG: np.array([encode_png(image) for image in images], dtype=object),
    }
    logs = []
    for signature, value in inputs.items():
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature)
        )
        request.inputs[SIGNATURE_INPUTS[signature]].CopyFrom(tf.make_tensor_proto(value))
        logs.append(prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request)))
    return logs


def _write_warmup(version_dir, logs):
    path = pathlib.Path(version_dir) / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for log in logs:
            writer.write(log.SerializeToString())


def _write_saved_model(model, path):
    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, fn in serving_functions(model).items():
        archive.add_endpoint(name, fn)
    archive.write_out(str(path), verbose=False)


def _tmp_owner_alive(tmp):
    try:
        os.kill(int(tmp.name[len(TMP_PREFIX) :].split("-")[0]), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # alive, another user's process
        pass
    return True


def remove_stale_tmp(base_path):
    """Delete temporary export folders left by processes that died mid-export; keep live ones."""
    for tmp in pathlib.Path(base_path).glob(TMP_PREFIX + "*"):
        if not _tmp_owner_alive(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def export_saved_model(model, base_path, warmup_images=None, model_name=None):
    """Export ``model`` as the next version under ``base_path``; return the new version folder.

    Existing versions are never touched. The version is complete (SavedModel, warmup records) before it
    appears under an integer name; concurrent exports to one base path each get their own version.
    """
    base_path = check_writable(base_path)
    model_name = model_name or base_path.name
    remove_stale_tmp(base_path)
    # The pid in the name lets a later export tell a dead export's leftovers from a live one's.
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=base_path))
    try:
        _write_saved_model(model, tmp)
        if warmup_images is not None:
            _write_warmup(tmp, warmup_requests(model_name, warmup_images))
        while True:
            final = base_path / str((versions(base_path) or [0])[-1] + 1)
            try:
                # rename(2) of a folder fails when the target exists and is not empty: another export won.
                os.rename(tmp, final)
                return final
            except OSError:
                if not final.is_dir() or not any(final.iterdir()):
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def model_config_text(models):
    """TF Serving ``model_config_list`` text for ``models``, a dict of model name -> base path."""
    entries = "".join(
        "  config {\n"
        f'    name: "{name}"\n'
        f'    base_path: "{pathlib.Path(path).resolve()}"\n'
        '    model_platform: "tensorflow"\n'
        "  }\n"
        for name, path in sorted(models.items())
    )
    return "model_config_list {\n" + entries + "}\n"


def write_model_config(config_path, base_path):
    """Write (atomically) a models.config serving every model folder beside ``base_path``'s."""
    config_path = pathlib.Path(config_path)
    parent = pathlib.Path(base_path).resolve().parent
    models = {p.name: p for p in parent.iterdir() if p.is_dir() and versions(p)}
    tmp = config_path.with_name(config_path.name + ".tmp")
    tmp.write_text(model_config_text(models))
    os.replace(tmp, config_path)
    return config_path
