"""TF Serving's rules for what it reads, in one place: version folders under a base path and which one it serves,
the SavedModel and warmup files of a version, ``models.config``, the provenance file fmnist_tf adds, and the
``PredictRequest`` a client (or a warmup record) sends.

What each rule mirrors, read in TF Serving's source (tensorflow/serving, tag 2.20.0):
- versions: the children of the base path whose names ``absl::SimpleAtoi`` parses as an int64, folder or
  not; the "latest" policy (the default) serves the highest (sources/storage_path/
  file_system_storage_path_source.cc);
- warmup: every ``PredictionLog`` in ``assets.extra/tf_serving_warmup_requests`` run as a request at load
  time, at most 1,000 records, any failure fails the load (servables/tensorflow/saved_model_warmup_util.cc);
- models.config: protobuf text of ``ModelServerConfig``, unique model names, absolute base paths, and every
  listed model must load for the server to start (model_servers/server_core.cc).

Imports only the standard library, TensorFlow, the TF Serving API protos and ``storage``: the export, the
evaluation and the check (which runs under the server's TensorFlow) all read these rules here.
"""

import json
import os
import pathlib
import re

import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import model_pb2, predict_pb2
from tensorflow_serving.config import model_server_config_pb2

from fmnist_tf import storage

SERVE_TAG = "serve"
DEFAULT_SIGNATURE = "serving_default"
# The outputs of every signature fmnist_tf exports (``signatures``), by the names clients and the check read.
PROBABILITIES, CLASS_ID, CLASS_NAME = "probabilities", "class_id", "class_name"
# TF Serving's VerifySignature accepts these method names for Predict.
PREDICT_METHODS = ("tensorflow/serving/predict", "tensorflow/serving/classify", "tensorflow/serving/regress")
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000  # WarmupConsts::kMaxNumRecords; record 1,001 fails the load
MODEL_CONFIG_FILE = "models.config"  # fmnist_tf writes it beside the base paths
PROVENANCE_FILE = os.path.join("assets.extra", "fmnist_tf.json")  # TF Serving ignores the rest of assets.extra
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
VARIABLES_PREFIX = os.path.join("variables", "variables")


# Images a request of this package's clients carries (evaluation, LiteRT scoring, the check): under the
# signatures' cap on a batch, as a client of TF Serving must stay.
REQUEST_IMAGES = 1000


def request_batches(images, size=REQUEST_IMAGES):
    """``images`` in consecutive slices of at most ``size``, as a client sends them in requests."""
    return (images[start : start + size] for start in range(0, len(images), size))


class ServingCheckError(ValueError):
    """An export or its models.config cannot be checked (missing, unreadable, not what TF Serving reads)."""


class ModelConfigError(ServingCheckError):
    """A models.config that TF Serving's protobuf text parser would reject."""


class ModelDirError(ServingCheckError):
    """A model path that names nothing to serve: no version TF Serving would take, one that does not load, or no
    LiteRT model."""


_SIMPLE_ATOI = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)[ \t\n\v\f\r]*")


def version_number(name):
    """The version TF Serving reads from a base path's child ``name`` (absl::SimpleAtoi, int64), or None."""
    match = _SIMPLE_ATOI.fullmatch(name)
    if not match:
        return None
    number = int(match.group(1))
    return number if -(2**63) <= number < 2**63 else None


def child(base_path, name):
    # A URL (gs://, s3://, ram://) stays a string: pathlib would fold its "//".
    return f"{str(base_path).rstrip('/')}/{name}" if storage.is_url(base_path) else pathlib.Path(base_path) / name


def version_paths(base_path):
    """Version number -> path of every child of ``base_path`` TF Serving takes for a version.

    Listed through TF's file layer, as TF Serving lists it: a local folder or a gs://, s3:// or ram:// URL
    (where a listing may name a folder "1/", or every object under it: the first component counts).
    """
    if not tf.io.gfile.isdir(str(base_path)):
        return {}
    found = {}
    for name in sorted({child.split("/")[0] for child in tf.io.gfile.listdir(str(base_path))}):
        number = version_number(name)
        if number is not None:
            found[number] = child(base_path, name)
    return dict(sorted(found.items()))


def is_saved_model(path):
    """True when ``path`` is a folder holding a SavedModel proto."""
    return any(tf.io.gfile.exists(str(child(path, name))) for name in SAVED_MODEL_FILES)


def read_model_config(path):
    """Parse ``path`` as TF Serving does (``ModelServerConfig`` in protobuf text); ModelConfigError if it cannot."""
    try:
        with tf.io.gfile.GFile(str(path)) as f:
            text = f.read()
    except (tf.errors.OpError, UnicodeDecodeError) as e:
        raise ModelConfigError(f"{path}: cannot be read: {e}") from e
    try:
        return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as e:
        raise ModelConfigError(
            f"{path} is not a TF Serving model config (ModelServerConfig text): {e}; fix or move it"
        ) from e


def read_provenance(version_dir):
    """The provenance record fmnist_tf wrote into ``version_dir`` (a dict), or None when there is none."""
    path = str(child(version_dir, PROVENANCE_FILE))
    if not tf.io.gfile.exists(path):
        return None
    try:
        with tf.io.gfile.GFile(path) as f:
            return json.loads(f.read())
    except ValueError as e:
        raise ServingCheckError(f"{path}: not JSON: {e}") from e


def resolve_export(model_dir):
    """(base path, version number, version folder) that TF Serving would serve for ``model_dir``; ModelDirError
    naming ``model_dir`` and what was expected when there is none.

    ``model_dir`` is a version folder (its parent is the base path) or a base path (its highest version), a local
    folder or a gs://, s3:// or ram:// URL. The paths returned are built on ``model_dir`` as given: a relative
    path stays relative, a URL a string.
    """
    storage.check_glob_free(model_dir, "model dir")
    if storage.is_url(model_dir):
        path = str(model_dir).rstrip("/")
        parent, name = path.rsplit("/", 1)
    else:
        path = pathlib.Path(model_dir)
        if path.name in ("", ".."):  # "." and ".." stand for a folder whose own name is the one TF Serving lists
            path = path.resolve()
        parent, name = path.parent, path.name
    if not tf.io.gfile.isdir(str(path)):
        raise ModelDirError(f"model dir {path} does not exist or is not a folder")
    if is_saved_model(path):
        number = version_number(name)
        if number is None:
            raise ModelDirError(
                f"model dir {path} is a SavedModel but not a version folder: TF Serving serves <base path>/<integer>/"
            )
        return parent, number, path
    found = version_paths(path)
    if not found:
        raise ModelDirError(
            f"model dir {path} is neither a SavedModel (no saved_model.pb) nor a base path with integer version "
            "folders (<base path>/<N>/saved_model.pb)"
        )
    number, version_dir = max(found.items())
    if not is_saved_model(version_dir):
        raise ModelDirError(
            f"model dir {path}: TF Serving would serve version {number} from it, but its latest version "
            f"{version_dir} holds no saved_model.pb"
        )
    return path, number, version_dir


def saved_model_folder(model_dir):
    """The SavedModel a client that loads it directly (``tf.saved_model.load``) takes for ``model_dir``: the folder
    itself when it holds one, in a version folder or not, else the version TF Serving would serve from it
    (``resolve_export``, whose ModelDirError says what was expected)."""
    storage.check_glob_free(model_dir, "model dir")
    if is_saved_model(model_dir):
        return str(model_dir).rstrip("/") if storage.is_url(model_dir) else pathlib.Path(model_dir)
    return resolve_export(model_dir)[2]


def served_name(base_path, model_name=None):
    """The name ``base_path``'s versions are served under (in models.config, warmup requests, provenance):
    ``model_name`` if given, else the base path's folder name."""
    return model_name or os.path.basename(str(base_path).rstrip("/"))


def model_config_path(base_path):
    """Where fmnist_tf lists ``base_path`` for TF Serving: ``models.config`` beside the base path."""
    return os.path.join(os.path.dirname(str(base_path).rstrip("/")), MODEL_CONFIG_FILE)


def predict_request(signature_name, inputs, model_name=""):
    """A ``PredictRequest`` for ``signature_name`` with ``inputs`` (alias -> array), as a client sends it."""
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature_name))
    for alias, value in inputs.items():
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
    return request
