"""Pre-flight checks of an export as TF Serving uses it, with TensorFlow's own C++ SavedModel loader.

What each check mirrors, read in TF Serving's source (tensorflow/serving, tag 2.20.0):
- versions: the children of the base path whose names ``absl::SimpleAtoi`` parses as an int64, folder or
  not; the "latest" policy (the default) serves the highest (sources/storage_path/
  file_system_storage_path_source.cc);
- loading: ``LoadSavedModel`` with the tag "serve", here through the C API's
  ``TF_LoadSessionFromSavedModel`` from the TensorFlow wheel's ``libtensorflow_cc.so.2``;
- predict: the request's inputs (TensorProtos, converted with ``Tensor::FromProto``) fed to the signature's
  input tensor names and all its output tensor names fetched in one ``Session::Run``
  (servables/tensorflow/predict_util.cc);
- warmup: every ``PredictionLog`` in ``assets.extra/tf_serving_warmup_requests`` run as a request at load
  time, at most 1,000 records, any failure fails the load (servables/tensorflow/saved_model_warmup_util.cc);
- models.config: protobuf text of ``ModelServerConfig``, unique model names, absolute base paths, and every
  listed model must load for the server to start (model_servers/server_core.cc).

Imports only the standard library, NumPy, TensorFlow and the TF Serving API protos (not the rest of
fmnist_tf), so it runs under the TensorFlow the server embeds:
``python -m fmnist_tf.cli.check_serving --model_dir=...`` from a checkout with that TensorFlow installed.
"""

import ctypes
import dataclasses
import functools
import gzip
import json
import os
import pathlib
import re
import stat
import time

import numpy as np

# TensorFlow's Python modules before its C library: loading libtensorflow_cc.so.2 first (RTLD_GLOBAL) and
# importing TensorFlow afterwards crashed the process (BUILD_NOTES.md).
import tensorflow as tf  # isort: skip
from google.protobuf import message, text_format
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

SERVE_TAG = "serve"
DEFAULT_SIGNATURE = "serving_default"
# TF Serving's VerifySignature accepts these method names for Predict.
PREDICT_METHODS = ("tensorflow/serving/predict", "tensorflow/serving/classify", "tensorflow/serving/regress")
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000  # WarmupConsts::kMaxNumRecords; record 1,001 fails the load
MODEL_CONFIG_FILE = "models.config"  # fmnist_tf writes it beside the base paths
PROVENANCE_FILE = os.path.join("assets.extra", "fmnist_tf.json")  # TF Serving ignores the rest of assets.extra
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
# The package's shipped copy of the test files, found without importing fmnist_tf.data.
DEFAULT_RAW_DIR = pathlib.Path(__file__).resolve().parent / "data" / "fashion-mnist"
TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
IMAGE_SHAPE = (28, 28)
# A version's test accuracy through serving_default may differ from the training run's figure by a few
# near-tied images (separately compiled graphs); more than this many in 10,000 means another model.
ACCURACY_TOLERANCE = 0.002
# Images per request of the accuracy check: fmnist_tf's signatures refuse more than 1,024 a request.
REQUEST_BATCH = 1000
VARIABLES_PREFIX = os.path.join("variables", "variables")


class ServingCheckError(ValueError):
    """An export or its models.config cannot be checked (missing, unreadable, not what TF Serving reads)."""


class ModelConfigError(ServingCheckError):
    """A models.config that TF Serving's protobuf text parser would reject."""


# --- What TF Serving reads from the file system --------------------------------------------------------

_SIMPLE_ATOI = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)[ \t\n\v\f\r]*")


def version_number(name):
    """The version TF Serving reads from a base path's child ``name`` (absl::SimpleAtoi, int64), or None."""
    match = _SIMPLE_ATOI.fullmatch(name)
    if not match:
        return None
    number = int(match.group(1))
    return number if -(2**63) <= number < 2**63 else None


def _child(base_path, name):
    # A URL (gs://, s3://, ram://) stays a string: pathlib would fold its "//".
    return f"{str(base_path).rstrip('/')}/{name}" if _is_uri(str(base_path)) else pathlib.Path(base_path) / name


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
            found[number] = _child(base_path, name)
    return dict(sorted(found.items()))


def is_saved_model(path):
    """True when ``path`` is a folder holding a SavedModel proto."""
    return any(tf.io.gfile.exists(str(_child(path, name))) for name in SAVED_MODEL_FILES)


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
    path = str(_child(version_dir, PROVENANCE_FILE))
    if not tf.io.gfile.exists(path):
        return None
    try:
        with tf.io.gfile.GFile(path) as f:
            return json.loads(f.read())
    except ValueError as e:
        raise ServingCheckError(f"{path}: not JSON: {e}") from e


def resolve_export(model_dir):
    """(base path, version number, version folder) that TF Serving would serve for ``model_dir``.

    ``model_dir`` is a version folder (its parent is the base path) or a base path (its highest version).
    """
    path = pathlib.Path(model_dir).resolve()
    if not path.is_dir():
        raise ServingCheckError(f"{model_dir} does not exist or is not a folder")
    if is_saved_model(path):
        number = version_number(path.name)
        if number is None:
            raise ServingCheckError(
                f"{model_dir} is a SavedModel but not a version folder: TF Serving serves <base path>/<integer>/"
            )
        return path.parent, number, path
    found = version_paths(path)
    if not found:
        raise ServingCheckError(
            f"{model_dir} holds no saved_model.pb and no integer-named version folder (<base path>/<N>/)"
        )
    number, version_dir = max(found.items())
    if not is_saved_model(version_dir):
        raise ServingCheckError(
            f"TF Serving would serve version {number} from {version_dir}, which holds no saved_model.pb"
        )
    return path, number, version_dir


# --- TensorFlow's C API through ctypes -----------------------------------------------------------------


class _Buffer(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("length", ctypes.c_size_t), ("data_deallocator", ctypes.c_void_p)]


class _Output(ctypes.Structure):
    _fields_ = [("oper", ctypes.c_void_p), ("index", ctypes.c_int)]


_P, _BUF = ctypes.c_void_p, ctypes.POINTER(_Buffer)
_PROTOTYPES = {
    "TF_Version": (ctypes.c_char_p, []),
    "TF_NewStatus": (_P, []),
    "TF_DeleteStatus": (None, [_P]),
    "TF_GetCode": (ctypes.c_int, [_P]),
    "TF_Message": (ctypes.c_char_p, [_P]),
    "TF_NewGraph": (_P, []),
    "TF_DeleteGraph": (None, [_P]),
    "TF_GraphOperationByName": (_P, [_P, ctypes.c_char_p]),
    "TF_NewSessionOptions": (_P, []),
    "TF_DeleteSessionOptions": (None, [_P]),
    "TF_NewBuffer": (_BUF, []),
    "TF_DeleteBuffer": (None, [_BUF]),
    "TF_LoadSessionFromSavedModel": (
        _P,
        [_P, _BUF, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, _P, _BUF, _P],
    ),
    "TF_CloseSession": (None, [_P, _P]),
    "TF_DeleteSession": (None, [_P, _P]),
    "TF_SessionRun": (
        None,
        [_P, _BUF, ctypes.POINTER(_Output), ctypes.POINTER(_P), ctypes.c_int,
         ctypes.POINTER(_Output), ctypes.POINTER(_P), ctypes.c_int, _P, ctypes.c_int, _BUF, _P],
    ),  # fmt: skip
    "TF_AllocateTensor": (_P, [ctypes.c_int, ctypes.POINTER(ctypes.c_int64), ctypes.c_int, ctypes.c_size_t]),
    "TF_TensorFromProto": (None, [_BUF, _P, _P]),
    "TF_DeleteTensor": (None, [_P]),
    "TF_TensorType": (ctypes.c_int, [_P]),
    "TF_NumDims": (ctypes.c_int, [_P]),
    "TF_Dim": (ctypes.c_int64, [_P, ctypes.c_int]),
    "TF_TensorByteSize": (ctypes.c_size_t, [_P]),
    "TF_TensorData": (_P, [_P]),
    "TF_StringGetDataPointer": (_P, [_P]),
    "TF_StringGetSize": (ctypes.c_size_t, [_P]),
}
_TSTRING_BYTES = 24  # sizeof(TF_TString): a string tensor's elements
_NUMPY_TYPES = {
    types_pb2.DT_FLOAT: np.float32,
    types_pb2.DT_DOUBLE: np.float64,
    types_pb2.DT_INT32: np.int32,
    types_pb2.DT_INT64: np.int64,
    types_pb2.DT_INT16: np.int16,
    types_pb2.DT_INT8: np.int8,
    types_pb2.DT_UINT8: np.uint8,
    types_pb2.DT_BOOL: np.bool_,
}
_CODES = ("OK CANCELLED UNKNOWN INVALID_ARGUMENT DEADLINE_EXCEEDED NOT_FOUND ALREADY_EXISTS PERMISSION_DENIED "
          "RESOURCE_EXHAUSTED FAILED_PRECONDITION ABORTED OUT_OF_RANGE UNIMPLEMENTED INTERNAL UNAVAILABLE "
          "DATA_LOSS UNAUTHENTICATED").split()  # fmt: skip


def _op_error(code, message):
    """The tf.errors exception for a TF status code (InvalidArgumentError for 3...)."""
    name = "".join(word.capitalize() for word in _CODES[code].split("_")) + "Error"
    return getattr(tf.errors, name)(None, None, message)


@functools.cache
def c_api():
    """TensorFlow's C API from the installed wheel's ``libtensorflow_cc.so.2``, its prototypes declared."""
    path = pathlib.Path(tf.__file__).resolve().parent / "libtensorflow_cc.so.2"
    if not path.is_file():
        raise ServingCheckError(f"TensorFlow's C++ library not found at {path} (needs a Linux TensorFlow wheel)")
    lib = ctypes.CDLL(str(path))
    for name, (restype, argtypes) in _PROTOTYPES.items():
        function = getattr(lib, name)
        function.restype, function.argtypes = restype, argtypes
    return lib


class _Status:
    def __init__(self, lib):
        self.lib, self.handle = lib, lib.TF_NewStatus()

    def raise_if_error(self, context):
        code = self.lib.TF_GetCode(self.handle)
        if code:
            raise _op_error(code, f"{context}: {self.lib.TF_Message(self.handle).decode(errors='replace')}")

    def close(self):
        self.lib.TF_DeleteStatus(self.handle)


def _tensor_from_proto(lib, proto, status):
    """A TF_Tensor made by ``Tensor::FromProto``, TF Serving's own conversion of request inputs."""
    data = proto.SerializeToString()
    buffer = _Buffer(ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p), len(data), None)
    tensor = lib.TF_AllocateTensor(types_pb2.DT_FLOAT, None, 0, 4)  # replaced whole by the proto's tensor
    lib.TF_TensorFromProto(ctypes.byref(buffer), tensor, status.handle)
    try:
        status.raise_if_error("request input is not a valid TensorProto")
    except tf.errors.OpError:
        lib.TF_DeleteTensor(tensor)
        raise
    return tensor


def _tensor_to_numpy(lib, tensor):
    dtype = lib.TF_TensorType(tensor)
    shape = tuple(lib.TF_Dim(tensor, i) for i in range(lib.TF_NumDims(tensor)))
    data = lib.TF_TensorData(tensor)
    if dtype == types_pb2.DT_STRING:
        items = [
            ctypes.string_at(lib.TF_StringGetDataPointer(element), lib.TF_StringGetSize(element))
            for element in range(data, data + _TSTRING_BYTES * int(np.prod(shape)), _TSTRING_BYTES)
        ]
        return np.array(items, dtype=object).reshape(shape)
    if dtype not in _NUMPY_TYPES:
        raise ServingCheckError(f"output dtype {types_pb2.DataType.Name(dtype)} is not read by this check")
    raw = ctypes.string_at(data, lib.TF_TensorByteSize(tensor))
    return np.frombuffer(raw, _NUMPY_TYPES[dtype]).reshape(shape)


class CSavedModel:
    """A SavedModel loaded by TensorFlow's C++ ``LoadSavedModel`` (tag "serve") and run by tensor names.

    ``meta_graph`` is the loaded ``MetaGraphDef`` (signatures with their ``TensorInfo`` names);
    ``predict(request)`` runs a ``PredictRequest`` the way TF Serving's ``RunPredict`` does.
    """

    def __init__(self, export_dir):
        self._lib = lib = c_api()
        status, options, meta_graph = _Status(lib), lib.TF_NewSessionOptions(), lib.TF_NewBuffer()
        self._graph, self._session = lib.TF_NewGraph(), None
        try:
            tags = (ctypes.c_char_p * 1)(SERVE_TAG.encode())
            self._session = lib.TF_LoadSessionFromSavedModel(
                options, None, str(export_dir).encode(), tags, 1, self._graph, meta_graph, status.handle
            )
            status.raise_if_error(f"{export_dir}: TensorFlow's C++ SavedModel loader")
            raw = ctypes.string_at(meta_graph.contents.data, meta_graph.contents.length)
            self.meta_graph = meta_graph_pb2.MetaGraphDef.FromString(raw)
        except BaseException:
            self.close()
            raise
        finally:
            lib.TF_DeleteBuffer(meta_graph)
            lib.TF_DeleteSessionOptions(options)
            status.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Close the session and free the graph."""
        lib = self._lib
        if self._session:
            status = _Status(lib)
            lib.TF_CloseSession(self._session, status.handle)
            lib.TF_DeleteSession(self._session, status.handle)
            status.close()
            self._session = None
        if self._graph:
            lib.TF_DeleteGraph(self._graph)
            self._graph = None

    def has_tensor(self, tensor_name):
        """True when the loaded graph has the operation that ``tensor_name`` ("op:index") names."""
        return bool(self._lib.TF_GraphOperationByName(self._graph, tensor_name.rpartition(":")[0].encode()))

    def _output(self, tensor_name):
        if not self.has_tensor(tensor_name):
            raise ServingCheckError(f"tensor {tensor_name} named by a signature is not in the loaded graph")
        op_name, _, index = tensor_name.rpartition(":")
        return _Output(self._lib.TF_GraphOperationByName(self._graph, op_name.encode()), int(index))

    def run(self, feeds, fetches):
        """``Session::Run``: ``feeds`` maps tensor names to TensorProtos; returns NumPy arrays for ``fetches``."""
        lib, status, inputs = self._lib, _Status(self._lib), []
        try:
            for proto in feeds.values():
                inputs.append(_tensor_from_proto(lib, proto, status))
            input_ports = (_Output * len(feeds))(*(self._output(name) for name in feeds))
            output_ports = (_Output * len(fetches))(*(self._output(name) for name in fetches))
            values = (_P * len(inputs))(*inputs)
            results = (_P * len(fetches))()
            lib.TF_SessionRun(self._session, None, input_ports, values, len(inputs),
                              output_ports, results, len(fetches), None, 0, None, status.handle)  # fmt: skip
            status.raise_if_error("Session::Run")
            try:
                return [_tensor_to_numpy(lib, tensor) for tensor in results]
            finally:
                for tensor in results:
                    lib.TF_DeleteTensor(tensor)
        finally:
            for tensor in inputs:
                lib.TF_DeleteTensor(tensor)
            status.close()

    def predict(self, request):
        """Output alias -> NumPy array for a ``PredictRequest``, with TF Serving's checks and error messages."""
        name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        if name not in self.meta_graph.signature_def:
            raise tf.errors.FailedPreconditionError(None, None, f'Serving signature key "{name}" not found.')
        signature = self.meta_graph.signature_def[name]
        if signature.method_name not in PREDICT_METHODS:
            raise tf.errors.InternalError(
                None, None, f"Expected prediction signature method_name to be one of {{{', '.join(PREDICT_METHODS)}}}."
                f" Was: {signature.method_name}"
            )  # fmt: skip
        sent, expected = set(request.inputs), set(signature.inputs)
        if sent != expected:
            raise tf.errors.InvalidArgumentError(
                None, None, f"input size does not match signature: {len(sent)}!={len(expected)} "
                f"Sent extra: {{{','.join(sorted(sent - expected))}}}. "
                f"Missing but required: {{{','.join(sorted(expected - sent))}}}."
            )  # fmt: skip
        aliases = list(request.output_filter) or list(signature.outputs)
        feeds = {signature.inputs[alias].name: request.inputs[alias] for alias in sorted(sent)}
        values = self.run(feeds, [signature.outputs[alias].name for alias in aliases])
        return dict(zip(aliases, values))


def predict_request(signature_name, inputs, model_name=""):
    """A ``PredictRequest`` for ``signature_name`` with ``inputs`` (alias -> array), as a client sends it."""
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature_name))
    for alias, value in inputs.items():
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
    return request


def replay_warmup(saved_model, version_dir):
    """Run every warmup record of ``version_dir`` on ``saved_model`` as TF Serving does at load; return the count.

    Raises the record's error (which would fail the load in TF Serving) with the record's number.
    """
    path = pathlib.Path(version_dir) / WARMUP_FILE
    if not path.exists():
        return 0  # optional in TF Serving
    count = 0
    try:
        for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
            count += 1
            if count > MAX_WARMUP_RECORDS:
                raise ServingCheckError(f"{path}: more than {MAX_WARMUP_RECORDS} records; TF Serving refuses the load")
            try:
                log = prediction_log_pb2.PredictionLog.FromString(record)
            except message.DecodeError as e:
                raise ServingCheckError(f"{path}: record {count} is not a PredictionLog ({e}), so TF Serving "
                                        "would not load: write the warmup records again") from e  # fmt: skip
            kind = log.WhichOneof("log_type")
            if kind is None:
                continue  # TF Serving skips a record with no log
            if kind != "predict_log":
                raise ServingCheckError(f"{path}: record {count} is a {kind}; this check replays predict_log only")
            try:
                saved_model.predict(log.predict_log.request)
            except tf.errors.OpError as e:
                raise ServingCheckError(f"{path}: record {count} fails, so TF Serving would not load: {e.message}") from e
    except tf.errors.DataLossError as e:
        raise ServingCheckError(f"{path}: not TFRecord data: {e.message}") from e
    return count


# --- The checks --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Check:
    """One line of the report: what was checked, whether it passed, and what was found."""

    name: str
    ok: bool
    detail: str

    def __str__(self):
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name}: {self.detail}"


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def readable_by_others(base_path, version_dir, config_path=None):
    """Paths a server running as another user could not read, each with the reason (empty: all readable).

    Mode bits for "others": every folder of the version and the base path o+rx (TF Serving lists the base
    path), every file o+r, every folder above the base path o+x. ACLs are not looked at.
    """
    problems = []
    for parent in pathlib.Path(base_path).parents:
        if not _mode(parent) & stat.S_IXOTH:
            problems.append(f"{parent} ({stat.filemode(os.stat(parent).st_mode)}: others cannot enter it)")
    folders = [pathlib.Path(base_path)]
    files = [pathlib.Path(config_path)] if config_path and pathlib.Path(config_path).exists() else []
    for root, _, names in os.walk(version_dir):
        folders.append(pathlib.Path(root))
        files.extend(pathlib.Path(root) / name for name in names)
    for folder in folders:
        if _mode(folder) & (stat.S_IROTH | stat.S_IXOTH) != stat.S_IROTH | stat.S_IXOTH:
            problems.append(f"{folder} ({stat.filemode(os.stat(folder).st_mode)}: others cannot list it)")
    for path in files:
        if not _mode(path) & stat.S_IROTH:
            problems.append(f"{path} ({stat.filemode(os.stat(path).st_mode)}: others cannot read it)")
    return problems


def _is_uri(path):
    return re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*://", path) is not None


def model_config_problems(config_path, base_path):
    """(entry name, problems) of ``base_path`` in the models.config at ``config_path``, as TF Serving sees it."""
    config = read_model_config(config_path)
    if config.WhichOneof("config") != "model_config_list":
        return None, [f"{config_path} has no model_config_list"]
    entries = config.model_config_list.config
    problems, names, mine = [], set(), []
    for entry in entries:
        if entry.name in names:
            problems.append(f"model {entry.name} is listed twice (TF Serving refuses to start)")
        names.add(entry.name)
        if _is_uri(entry.base_path):
            continue  # a remote base path is not looked at here
        if not os.path.isabs(entry.base_path):
            problems.append(f"model {entry.name}: base_path {entry.base_path!r} is not absolute (TF Serving refuses it)")
            continue
        if os.path.normpath(entry.base_path) == str(base_path):
            mine.append(entry)
        elif not version_paths(entry.base_path):
            problems.append(
                f"model {entry.name}: {entry.base_path} holds no version, so the server would never be ready"
            )
    if not mine:
        problems.append(f"{config_path} does not list {base_path}")
        return None, problems
    for entry in mine:
        if entry.model_platform not in ("", "tensorflow"):
            problems.append(f"model {entry.name}: model_platform {entry.model_platform!r}, expected 'tensorflow'")
    return mine[0].name, problems


def read_test_set(raw_dir):
    """(uint8 [10000, 28, 28] images, int64 labels) from the IDX .gz files in ``raw_dir``, with gzip and NumPy."""
    images_path, labels_path = (pathlib.Path(raw_dir) / name for name in TEST_FILES)
    try:
        images, labels = gzip.open(images_path).read(), gzip.open(labels_path).read()
    except (OSError, EOFError) as e:
        raise ServingCheckError(f"cannot read the test files in {raw_dir}: {e}") from e
    count = int.from_bytes(images[4:8], "big")
    if (images[:4], labels[:4]) != (b"\0\0\x08\x03", b"\0\0\x08\x01") or len(images) != 16 + count * 784 or (
        len(labels) != 8 + count
    ):
        raise ServingCheckError(f"{images_path} and {labels_path} are not matching IDX image and label files")
    return np.frombuffer(images, np.uint8, offset=16).reshape(count, *IMAGE_SHAPE), np.frombuffer(
        labels, np.uint8, offset=8
    ).astype(np.int64)


def _describe(infos):
    def shape(info):
        if info.tensor_shape.unknown_rank:
            return "?"
        return "[" + ", ".join(str(d.size) for d in info.tensor_shape.dim) + "]"

    return ", ".join(
        f"{alias} {types_pb2.DataType.Name(info.dtype)[3:].lower()} {shape(info)}" for alias, info in sorted(infos.items())
    )


def signature_checks(saved_model):
    """One Check per signature: its inputs and outputs, and whether TF Serving's Predict can run it."""
    checks = []
    for name, signature in sorted(saved_model.meta_graph.signature_def.items()):
        if name.startswith("__"):
            continue  # __saved_model_init_op: not a signature clients call
        problems = [] if signature.method_name in PREDICT_METHODS else [f"method_name {signature.method_name!r}"]
        problems += [
            f"tensor {info.name} is not in the loaded graph"
            for info in [*signature.inputs.values(), *signature.outputs.values()]
            if not saved_model.has_tensor(info.name)
        ]
        detail = f"{_describe(signature.inputs)} -> {_describe(signature.outputs)}"
        checks.append(Check(f"signature {name}", not problems, "; ".join([detail, *problems])))
    return checks


def accuracy_check(saved_model, raw_dir, provenance):
    """serving_default on the 10,000 test images by tensor names; compared with the training run's figure."""
    images, labels = read_test_set(raw_dir)
    signature = saved_model.meta_graph.signature_def.get(DEFAULT_SIGNATURE)
    if signature is None or len(signature.inputs) != 1:
        return Check("test accuracy", False, f"no {DEFAULT_SIGNATURE} signature with one input")
    ((alias, info),) = signature.inputs.items()
    if info.dtype != types_pb2.DT_UINT8:
        return Check("test accuracy", False, f"{DEFAULT_SIGNATURE} input {alias} is not uint8 images")
    began = time.perf_counter()
    requests = (
        saved_model.predict(predict_request(DEFAULT_SIGNATURE, {alias: images[start : start + REQUEST_BATCH]}))
        for start in range(0, len(images), REQUEST_BATCH)
    )
    parts = list(requests)
    seconds = time.perf_counter() - began
    outputs = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    if not {"class_id", "probabilities"} & set(outputs):
        return Check("test accuracy", False, f"{DEFAULT_SIGNATURE} has neither a class_id nor a probabilities output")
    predicted = outputs["class_id"] if "class_id" in outputs else outputs["probabilities"].argmax(axis=1)
    accuracy = float(np.mean(predicted == labels))
    detail = f"{accuracy:.4f} on {len(labels):,} images through {DEFAULT_SIGNATURE} ({seconds:.2f} s)"
    ok = True
    if "probabilities" in outputs and not np.all(np.isfinite(outputs["probabilities"])):
        ok, detail = False, detail + "; probabilities hold NaN or inf"
    elif "probabilities" in outputs and not np.array_equal(predicted, outputs["probabilities"].argmax(axis=1)):
        ok, detail = False, detail + "; class_id is not the argmax of probabilities"
    recorded = (provenance or {}).get("figures", {}).get("test_accuracy")
    if recorded is not None:
        ok = ok and abs(accuracy - recorded) <= ACCURACY_TOLERANCE
        detail += f"; training measured {recorded:.4f}"
    return Check("test accuracy", ok, detail)


def finite_weights_check(version_dir):
    """Whether every floating-point variable of the version is finite: a diverged model answers NaN."""
    prefix = str(_child(version_dir, VARIABLES_PREFIX))
    try:
        reader = tf.compat.v1.train.NewCheckpointReader(prefix)
        names = [name for name, dtype in sorted(reader.get_variable_to_dtype_map().items()) if dtype.is_floating]
        nonfinite = [name for name in names if not np.all(np.isfinite(reader.get_tensor(name)))]
    except (tf.errors.OpError, IndexError, ValueError) as e:
        return Check("finite weights", False, f"{prefix}: cannot be read: {str(e).strip().splitlines()[0]}")
    if nonfinite:
        return Check("finite weights", False, f"{len(nonfinite)} of {len(names)} variables hold NaN or inf "
                     f"(first: {nonfinite[0]}): the model diverged in training; do not serve it")  # fmt: skip
    return Check("finite weights", True, f"all {len(names)} floating-point variables finite")


def model_config_path(base_path):
    """Where fmnist_tf lists ``base_path`` for TF Serving: ``models.config`` beside the base path."""
    return os.path.join(os.path.dirname(str(base_path).rstrip("/")), MODEL_CONFIG_FILE)


def run_checks(model_dir, raw_dir=DEFAULT_RAW_DIR):
    """Every pre-flight check of the export at ``model_dir`` (base path or version): (list of Check, provenance).

    Raises ServingCheckError only when ``model_dir`` is not an export at all.
    """
    base_path, number, version_dir = resolve_export(model_dir)
    config_path = pathlib.Path(model_config_path(base_path))
    checks = []
    try:
        provenance = read_provenance(version_dir)
    except ServingCheckError as e:
        provenance = None
        checks.append(Check("provenance", False, str(e)))

    began = time.perf_counter()
    try:
        saved_model = CSavedModel(version_dir)
    except tf.errors.OpError as e:
        saved_model = None
        checks.append(Check("C++ loader", False, e.message))
    else:
        loaded = f"version {number} of {base_path} in {time.perf_counter() - began:.2f} s"
        checks.append(Check("C++ loader", True, f"TensorFlow {tf.__version__} LoadSavedModel(tag serve) loaded {loaded}"))
    if saved_model:
        checks.append(finite_weights_check(version_dir))
        with saved_model:
            checks.extend(signature_checks(saved_model))
            try:
                count = replay_warmup(saved_model, version_dir)
                checks.append(Check("warmup", True, f"{count} records of {WARMUP_FILE} replayed" if count else
                                    f"no {WARMUP_FILE} (optional)"))  # fmt: skip
            except ServingCheckError as e:
                checks.append(Check("warmup", False, str(e)))
            try:
                checks.append(accuracy_check(saved_model, raw_dir, provenance))
            except (ServingCheckError, tf.errors.OpError) as e:
                checks.append(Check("test accuracy", False, str(e)))

    problems = readable_by_others(base_path, version_dir, config_path)
    checks.append(Check("readable by other users", not problems, "; ".join(problems) or
                        "every folder o+rx, every file o+r, the folders above traversable"))  # fmt: skip
    if not config_path.exists():
        checks.append(Check("models.config", False, f"no {config_path} (TF Serving's --model_config_file)"))
    else:
        try:
            name, problems = model_config_problems(config_path, base_path)
            detail = f"{config_path} serves {base_path} as model {name}" if name else str(config_path)
            checks.append(Check("models.config", not problems, "; ".join([detail, *problems])))
        except ModelConfigError as e:
            checks.append(Check("models.config", False, str(e)))
    return checks, provenance

