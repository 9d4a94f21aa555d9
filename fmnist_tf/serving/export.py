"""SavedModel export in TF Serving's layout: signatures, versions, atomic writes, config, warmup, provenance.

A base path holds integer-named version folders (``<base>/1``, ``<base>/2``...). TF Serving polls it and
loads any child whose name parses as an integer, so a version is written beside the base path's versions
under a name that does not, then renamed into place in one step once complete, with the modes a plain
``mkdir``/``open`` gives under the user's umask (a server running as another user reads it).

A base path may also be a gs://, s3:// or ram:// URL (TF's file layer). Object stores cannot rename a
folder in one step: there the version's files are copied into place one by one, ``saved_model.pb`` last
(``_publish_by_copy``).
"""

import datetime
import fcntl
import importlib.metadata
import json
import os
import pathlib
import secrets
import re
import shutil
import socket
import stat
import time

import keras
import numpy as np
import tensorflow as tf
from google.protobuf import text_format

from fmnist_tf import storage
from fmnist_tf.serving import layout
from fmnist_tf.model import nonfinite_variables
from fmnist_tf.data import CLASS_NAMES, IMAGE_SHAPE, NUM_PIXELS, RAW_FILES, normalize, sha256

# Signature names and their input names: what TF Serving clients put in their requests.
SERVING_DEFAULT = "serving_default"  # uint8 [None, 28, 28] raw pixels
SERVING_NORMALIZED = "serving_normalized"  # float32 [None, 784], the notebook model's own input
SERVING_PNG = "serving_png"  # string [None] encoded 28x28 grayscale PNGs ({"b64": ...} over REST)
SIGNATURE_INPUTS = {SERVING_DEFAULT: "images", SERVING_NORMALIZED: "pixels", SERVING_PNG: "png_bytes"}
OUTPUT_NAMES = ("probabilities", "class_id", "class_name")
WARMUP_FILE = layout.WARMUP_FILE
PROVENANCE_FILE = layout.PROVENANCE_FILE
MODEL_CONFIG_FILE = layout.MODEL_CONFIG_FILE
model_config_path = layout.model_config_path
TMP_PREFIX = ".tmp-"
# A temporary export whose writer cannot be checked (another host's) is left alone this long: an export
# takes seconds, and on shared storage a live one must never be deleted under its writer.
STALE_TMP_SECONDS = 24 * 3600
# Every signature refuses a request of more images than this: one request must not hold a core, or hundreds of
# MB, for long (clients split larger batches).
MAX_BATCH = 1024
MAX_PNG_BATCH = MAX_BATCH
# A 28x28 8-bit grayscale PNG holds 812 bytes of pixel data (28 rows of a filter byte and 28 pixels), ~900 bytes
# stored uncompressed; more than this per PNG, or per request, is refused before any is decompressed (a zlib
# bomb inside a valid 28x28 header would otherwise be inflated in full).
MAX_PNG_BYTES = 4096
MAX_PNG_REQUEST_BYTES = 2 * 1024 * 1024
# A PNG opens with its 8-byte signature and the IHDR chunk (length 13, "IHDR"), then width and height
# (big-endian uint32), bit depth and colour type: the first 26 bytes say what decode_png would allocate.
_PNG_SIGNATURE_AND_IHDR = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR"
_PNG_HEADER_BYTES = 26
_PNG_ACCEPTED = (*IMAGE_SHAPE[::-1], 8, 0)  # width, height, bit depth 8, colour type 0 (grayscale)


class ExportError(OSError):
    """The export base path cannot be used."""


class NonFiniteWeightsError(ValueError):
    """The model's weights hold NaN or inf: training diverged, and such a model is never published."""


def check_finite_weights(model):
    """NonFiniteWeightsError, before anything is written, when ``model``'s weights hold NaN or inf."""
    nonfinite = nonfinite_variables(model.variables)
    if nonfinite:
        raise NonFiniteWeightsError(
            f"training diverged: the weights {nonfinite[0]} hold NaN or inf, so nothing was exported; "
            "train again with a lower --learning_rate (in another --workdir)"
        )


def _outputs(probabilities):
    class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
    return {
        "probabilities": probabilities,
        "class_id": class_id,
        "class_name": tf.gather(tf.constant(CLASS_NAMES), class_id),
    }


def _png_headers(png_bytes):
    """int64 [n, 4]: each PNG's width, height, bit depth and colour type from its IHDR; -1s for a non-PNG."""
    # fixed_length reads only the first bytes of each string (zero-padded when shorter): no decoding.
    head = tf.cast(tf.io.decode_raw(png_bytes, tf.uint8, fixed_length=_PNG_HEADER_BYTES), tf.int64)
    is_png = tf.reduce_all(tf.equal(head[:, :16], list(_PNG_SIGNATURE_AND_IHDR)), axis=1)
    weights = tf.constant([2**24, 2**16, 2**8, 1], tf.int64)
    fields = tf.stack(
        [tf.reduce_sum(head[:, 16:20] * weights, 1), tf.reduce_sum(head[:, 20:24] * weights, 1), head[:, 24], head[:, 25]],
        axis=1,
    )
    return tf.where(is_png[:, None], fields, tf.constant(-1, tf.int64))


def _checked(values, condition, message, name):
    """``values`` once ``condition`` holds; else InvalidArgumentError from an Assert op called ``name``."""
    with tf.control_dependencies([tf.debugging.Assert(condition, message, summarize=4, name=name)]):
        return tf.identity(values)


def _check_batch(values, signature, noun):
    count = tf.shape(values)[0]
    return _checked(
        values, count <= MAX_BATCH, [f"batch_too_large: {signature} takes at most {MAX_BATCH} {noun} a request, got", count],
        "batch_too_large",
    )  # fmt: skip


def _check_pixels(pixels):
    """``pixels`` once every value is finite and in [0, 1], the range ``normalize`` gives (refused, not clipped:
    a value outside it means the client normalized otherwise, and its answers would be wrong)."""
    finite = tf.math.is_finite(pixels)
    pixels = _checked(
        pixels, tf.reduce_all(finite),
        ["pixels_must_be_finite: serving_normalized takes finite pixels in [0, 1]; NaN or inf at (row, column):",
         tf.where(tf.logical_not(finite))[:1]],
        "pixels_must_be_finite",
    )  # fmt: skip
    outside = tf.logical_or(pixels < 0, pixels > 1)
    return _checked(
        pixels, tf.logical_not(tf.reduce_any(outside)),
        ["pixels_must_be_in_0_to_1: serving_normalized takes pixels in [0, 1] (uint8 / 255); at (row, column), value:",
         tf.where(outside)[:1], tf.boolean_mask(pixels, outside)[:1]],
        "pixels_must_be_in_0_to_1",
    )  # fmt: skip


def _check_pngs(png_bytes):
    """``png_bytes``, once the batch is at most MAX_PNG_BATCH, no PNG is longer than MAX_PNG_BYTES nor all together
    longer than MAX_PNG_REQUEST_BYTES, and every header is a 28x28 8-bit grayscale PNG. Each check runs after
    the one before, so a request gets the first reason that applies.

    Checked before decode_png: a small PNG may declare 2^31 x 2^31 pixels, which decode_png would allocate.
    """
    count = tf.size(png_bytes)
    png_bytes = _checked(
        png_bytes, count <= MAX_PNG_BATCH,
        [f"png_batch_too_large: serving_png takes at most {MAX_PNG_BATCH} PNGs a request, got", count],
        "png_batch_too_large",
    )  # fmt: skip
    lengths = tf.strings.length(png_bytes)
    too_long = lengths > MAX_PNG_BYTES
    png_bytes = _checked(
        png_bytes, tf.logical_not(tf.reduce_any(too_long)),
        [f"png_too_large: serving_png takes PNGs of at most {MAX_PNG_BYTES} bytes; refused (index; bytes):",
         tf.where(too_long)[:1], tf.boolean_mask(lengths, too_long)[:1]],
        "png_too_large",
    )  # fmt: skip
    total = tf.reduce_sum(tf.cast(lengths, tf.int64))
    png_bytes = _checked(
        png_bytes, total <= MAX_PNG_REQUEST_BYTES,
        [f"png_request_too_large: serving_png takes at most {MAX_PNG_REQUEST_BYTES} bytes of PNGs a request, got",
         total],
        "png_request_too_large",
    )  # fmt: skip
    headers = _png_headers(png_bytes)
    refused = tf.logical_not(tf.reduce_all(tf.equal(headers, list(_PNG_ACCEPTED)), axis=1))
    return _checked(
        png_bytes, tf.logical_not(tf.reduce_any(refused)),
        [
            "png_must_be_28x28_8bit_grayscale: serving_png takes 28x28 8-bit grayscale PNGs; refused "
            "(index; width, height, bit depth, colour type; -1 if not a PNG):",
            tf.where(refused)[:1],
            tf.boolean_mask(headers, refused)[:1],
        ],
        "png_must_be_28x28_8bit_grayscale",
    )


def _decode_png(png):
    # The header check made it a 28x28 8-bit grayscale PNG: one channel, 28x28.
    return tf.reshape(tf.io.decode_png(png, channels=1), IMAGE_SHAPE)


def serving_functions(model):
    """Signature name -> tf.function, each ending in the Keras model with preprocessing in the graph."""

    # autograph=False: no Python control flow on tensors in these functions, and converting their source
    # was ~40% of the export's time (the main job pays it every run).
    @tf.function(input_signature=[tf.TensorSpec([None, *IMAGE_SHAPE], tf.uint8, name="images")], autograph=False)
    def serve_images(images):
        # ensure_shape: a bad request fails here with the expected shape in the message, not deep inside.
        images = tf.ensure_shape(images, [None, *IMAGE_SHAPE], name="images_must_be_batch_x_28_x_28")
        images = _check_batch(images, SERVING_DEFAULT, "images")
        return _outputs(model(normalize(images), training=False))

    @tf.function(input_signature=[tf.TensorSpec([None, NUM_PIXELS], tf.float32, name="pixels")], autograph=False)
    def serve_normalized(pixels):
        pixels = tf.ensure_shape(pixels, [None, NUM_PIXELS], name="pixels_must_be_batch_x_784")
        pixels = _check_pixels(_check_batch(pixels, SERVING_NORMALIZED, "images"))
        return _outputs(model(pixels, training=False))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="png_bytes")], autograph=False)
    def serve_png(png_bytes):
        images = tf.map_fn(
            _decode_png, _check_pngs(png_bytes), fn_output_signature=tf.TensorSpec(IMAGE_SHAPE, tf.uint8)
        )
        return _outputs(model(normalize(images), training=False))

    return {SERVING_DEFAULT: serve_images, SERVING_NORMALIZED: serve_normalized, SERVING_PNG: serve_png}


def versions(base_path):
    """Sorted versions under ``base_path``, by TF Serving's rule (children whose names parse as integers)."""
    return list(layout.version_paths(base_path))


def latest_version_path(base_path):
    """The version TF Serving serves by default (the highest) under ``base_path``, or None when there is none."""
    found = layout.version_paths(base_path)
    return found[max(found)] if found else None


def _enclosing_saved_model(base_path):
    """The SavedModel folder (a published version) that the local ``base_path`` is or lies in, or None."""
    path = pathlib.Path(storage.local_path(base_path)).absolute()
    return next((p for p in (path, *path.parents) if p.is_dir() and layout.is_saved_model(p)), None)


def check_writable(base_path):
    """Create ``base_path`` if needed; ExportError with the reason when it cannot be written, ValueError when
    its path holds glob characters or lies inside a version (exporting would change a published version)."""
    storage.check_glob_free(base_path, "export dir")
    if storage.is_local(base_path):
        version = _enclosing_saved_model(base_path)
        if version is not None:
            raise ValueError(
                f"export dir {base_path} is inside the SavedModel {version}: exporting there would change a "
                f"published version; use a base path such as {version.parent}"
            )
    if not storage.is_local(base_path):
        try:
            tf.io.gfile.makedirs(str(base_path))
        except tf.errors.OpError as e:
            raise ExportError(f"export dir {base_path} cannot be written: {e.message}") from e
        return str(base_path).rstrip("/")
    try:
        return storage.ensure_writable_dir(base_path)
    except OSError as e:
        raise ExportError(f"export dir {base_path} cannot be written: {e.strerror or e}") from e


def encode_png(image):
    """uint8 [28, 28] array -> PNG bytes, the format the serving_png signature takes."""
    return tf.io.encode_png(tf.expand_dims(tf.convert_to_tensor(image, tf.uint8), -1)).numpy()


def warmup_requests(model_name, images):
    """One PredictionLog per signature for ``images`` (uint8 [n, 28, 28]), as TF Serving replays them."""
    from tensorflow_serving.apis import prediction_log_pb2

    images = np.asarray(images, dtype=np.uint8)
    inputs = {
        SERVING_DEFAULT: images,
        SERVING_NORMALIZED: normalize(images).numpy(),
        SERVING_PNG: np.array([encode_png(image) for image in images], dtype=object),
    }
    return [
        prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(
                request=layout.predict_request(signature, {SIGNATURE_INPUTS[signature]: value}, model_name)
            )
        )
        for signature, value in inputs.items()
    ]


def _write_warmup(version_dir, logs):
    path = os.path.join(str(version_dir), WARMUP_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log.SerializeToString())


def _write_saved_model(model, path):
    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, fn in serving_functions(model).items():
        archive.add_endpoint(name, fn)
    archive.write_out(str(path), verbose=False)


def _host():
    # Dots separate the fields of a temporary name: a host name keeps letters, digits and "-".
    return re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname())


def _tmp_name():
    """A temporary export's name: host, pid and start time of its writer (never all digits)."""
    return f"{TMP_PREFIX}{_host()}.{os.getpid()}.{int(time.time())}.{secrets.token_hex(4)}"


def _tmp_is_stale(name, now=None):
    """True for a temporary export whose writer is gone: a dead pid on this host, or, whatever the host
    (another host's pids cannot be checked from here), a start more than STALE_TMP_SECONDS ago."""
    fields = name[len(TMP_PREFIX) :].split(".")
    if len(fields) != 4 or not (fields[1].isdigit() and fields[2].isdigit()):
        return False  # not one of ours
    host, pid, started = fields[0], int(fields[1]), int(fields[2])
    if (now or time.time()) - started > STALE_TMP_SECONDS:
        return True
    return host == _host() and not storage.pid_alive(pid)


def remove_stale_tmp(base_path):
    """Delete temporary export folders left by writers that died mid-export; keep live ones, on any host."""
    for name in tf.io.gfile.listdir(str(base_path)):
        name = name.rstrip("/")
        if name.startswith(TMP_PREFIX) and _tmp_is_stale(name):
            storage.remove_tree(os.path.join(str(base_path), name))


def _version_info():
    try:
        package = importlib.metadata.version("fmnist_tf")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that is not installed
        package = None
    return {"fmnist_tf": package, "tensorflow": tf.__version__, "keras": keras.__version__}


def training_provenance(config, figures):
    """What a version records about the run that made it: ``config`` (dict of the training settings),
    ``figures`` (run()'s validation and test figures) and the SHA-256 of the four data files in
    ``config["raw_dir"]`` (both sources check them against TFDS's registered sums)."""
    paths = [pathlib.Path(config["raw_dir"]) / name for split in RAW_FILES.values() for name in split]
    return {
        "model": config["model"],
        "config": config,
        "figures": {key: figures[key] for key in ("val_accuracy", "val_loss", "test_accuracy", "test_loss")},
        "data_sha256": {path.name: sha256(path) for path in paths},
    }


def _write_provenance(version_dir, model_name, provenance):
    record = {
        "model_name": model_name,
        **(provenance or {}),
        "versions": _version_info(),
        "exported_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    path = os.path.join(str(version_dir), PROVENANCE_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps(record, indent=2) + "\n")


def _make_tmp_dir(base_path):
    # Host and pid in the name let a later export tell a dead export's leftovers from a live one's. os.mkdir,
    # not mkdtemp (mode 0700): the folder becomes the version, and must get the umask's mode.
    while True:
        tmp = base_path / _tmp_name()
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue


def _apply_umask_modes(folder):
    """Give every folder and file under ``folder`` the mode plain mkdir/open give under the umask.

    ``folder`` was made by os.mkdir (0777 minus the umask), so its own mode says what the umask is;
    TF and Keras write some files and folders with modes of their own (e.g. 0755 whatever the umask).
    """
    folder_mode = stat.S_IMODE(os.stat(folder).st_mode)  # with the set-group-ID bit mkdir inherits, if any
    for root, folders, files in os.walk(folder):
        for name in folders:
            os.chmod(os.path.join(root, name), folder_mode)
        for name in files:
            os.chmod(os.path.join(root, name), folder_mode & 0o666)


def export_saved_model(model, base_path, warmup_images=None, model_name=None, provenance=None):
    """Export ``model`` as the next version under ``base_path``; return the new version folder.

    Existing versions are never touched. The version is complete (SavedModel, warmup records, provenance
    in ``assets.extra/fmnist_tf.json``: ``provenance`` plus the library versions and the time) before it
    appears under an integer name; concurrent exports to one base path each get their own version.
    """
    check_finite_weights(model)
    base_path = check_writable(base_path)
    model_name = model_name or os.path.basename(str(base_path))
    try:
        remove_stale_tmp(base_path)
        if not storage.is_local(base_path):
            return _publish_by_copy(model, base_path, warmup_images, model_name, provenance)
        return _publish_by_rename(model, base_path, warmup_images, model_name, provenance)
    except (OSError, tf.errors.OpError) as e:
        if isinstance(e, ExportError):
            raise
        raise ExportError(f"export to {base_path} failed: {storage.reason(e)}; no version was published: free "
                          "space or fix the folder, then export again")  # fmt: skip


def _publish_by_rename(model, base_path, warmup_images, model_name, provenance):
    """``export_saved_model`` for a local base path: written complete under a temporary name, then renamed."""
    tmp = _make_tmp_dir(base_path)
    try:
        _write_saved_model(model, tmp)
        if warmup_images is not None:
            _write_warmup(tmp, warmup_requests(model_name, warmup_images))
        _write_provenance(tmp, model_name, provenance)
        _apply_umask_modes(tmp)
        while True:
            final = base_path / str(max(versions(base_path), default=0) + 1)
            try:
                # rename(2) of a folder fails when the target exists and is not empty: another export won.
                os.rename(tmp, final)
                return final
            except OSError:
                if not final.is_dir() or not any(final.iterdir()):
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish_by_copy(model, base_path, warmup_images, model_name, provenance):
    """``export_saved_model`` for an object store (gs://, s3://; ram:// here), where no folder can be renamed
    in one step and TF's rename of a folder is a copy of each object.

    The version is written complete under a temporary name TF Serving ignores, then copied into
    ``<base>/<N>/`` file by file with ``saved_model.pb`` last. TF Serving may list ``<N>`` before the copy
    ends (it lists the base path's objects), but a version without ``saved_model.pb`` fails to load and
    is retried (--max_num_load_retries=5, a minute apart, by default); once ``saved_model.pb`` is there,
    so are the variables, assets and warmup records. TFX's Pusher copies versions in relying on the same
    retries. Two exports racing to one bucket base path could pick the same number: one run per base path.
    """
    tmp = f"{base_path}/{_tmp_name()}"
    try:
        _write_saved_model(model, tmp)
        if warmup_images is not None:
            _write_warmup(tmp, warmup_requests(model_name, warmup_images))
        _write_provenance(tmp, model_name, provenance)
        final = f"{base_path}/{max(versions(base_path), default=0) + 1}"
        storage.copy_tree(tmp, final, last=layout.SAVED_MODEL_FILES)
        return final
    finally:
        if tf.io.gfile.exists(tmp):
            storage.remove_tree(tmp)


def read_listable_model_config(config_path, base_path, model_name=None):
    """The ``ModelServerConfig`` in ``config_path`` (None when there is no file yet); ModelConfigError when
    TF Serving would not parse it or an entry for ``base_path`` cannot be added to it (``model_name``, default
    the folder's name, lists another base path). Runs check this before they train, so that a bad file stops
    them before anything is written."""
    if not tf.io.gfile.exists(str(config_path)):
        return None
    config = layout.read_model_config(config_path)
    if config.WhichOneof("config") == "custom_model_config":
        raise layout.ModelConfigError(f"{config_path} holds a custom_model_config; list {base_path} yourself")
    _config_entry(config, config_path, _listed_path(base_path), model_name)
    return config


def _listed_path(base_path):
    """``base_path`` as models.config lists it: absolute and resolved locally, a URL as it is."""
    if storage.is_local(base_path):
        return str(pathlib.Path(storage.local_path(base_path)).resolve())
    return str(base_path).rstrip("/")


def _config_entry(config, config_path, base_path, model_name=None):
    """The entry of ``config`` named ``model_name`` (default: the base path's folder name), or None; ModelConfigError
    when that name already serves another base path (a user's own model is never repointed)."""
    model_name = model_name or os.path.basename(base_path)
    entry = next((e for e in config.model_config_list.config if e.name == model_name), None)
    if entry is not None and _listed_path(entry.base_path) != base_path:
        raise layout.ModelConfigError(
            f"{config_path} already lists model {model_name} at {entry.base_path}, not at this export's {base_path}: "
            "rename one of the two folders, or remove that entry"
        )
    return entry


def write_model_config(config_path, base_path, model_name=None):
    """Add or update ``model_name``'s entry (default: the base path's folder name) in TF Serving's
    ``config_path``, keeping every other entry; return ``config_path``.

    The file is a ``ModelServerConfig`` in protobuf text, parsed and written with protobuf's text_format
    (any path round-trips), replaced atomically. When the entry is there already the file is not touched; when
    it is added, the file is written anew in text_format's layout (comments are not kept). An entry of that
    name for another base path is refused (ModelConfigError), never repointed. ``base_path`` must hold a
    complete version (TF Serving refuses to start when a listed model cannot load). A file that does not parse
    is left as it is: ModelConfigError names it.
    """
    from tensorflow_serving.config import model_server_config_pb2

    local = storage.is_local(base_path)
    if local:
        config_path, base_path = pathlib.Path(config_path), pathlib.Path(base_path).resolve()
    else:  # a URL: TF Serving reads gs:// and s3:// base paths as they are
        config_path, base_path = str(config_path), str(base_path).rstrip("/")
    model_name = model_name or os.path.basename(str(base_path))
    latest = latest_version_path(base_path)
    if latest is None or not layout.is_saved_model(latest):
        raise ExportError(f"{base_path} holds no complete version to list in {config_path}")
    # Exports of several models update one file: one writer at a time, each keeping the others' entries.
    # An object store has no such lock: there, one writer at a time is the caller's to arrange.
    lock = os.open(config_path.parent, os.O_RDONLY | os.O_DIRECTORY) if local else None
    try:
        if lock is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        config = read_listable_model_config(config_path, base_path, model_name)
        config = config or model_server_config_pb2.ModelServerConfig()
        entry = _config_entry(config, config_path, str(base_path), model_name)
        # Listed already (a later version of the same base path): the user's file stays as it is, byte for byte.
        if entry is None or entry.model_platform != "tensorflow":
            entry = entry or config.model_config_list.config.add(name=model_name, base_path=str(base_path))
            entry.model_platform = "tensorflow"
            write = storage.replace_file if local else storage.write_text
            write(config_path, text_format.MessageToString(config))
    finally:
        if lock is not None:
            os.close(lock)
    return config_path
