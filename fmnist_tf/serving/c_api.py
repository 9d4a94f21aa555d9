"""TensorFlow's C API through ctypes: the C++ ``LoadSavedModel`` and ``Session::Run`` by tensor names that TF
Serving links, from the TensorFlow wheel's ``libtensorflow_cc.so.2`` (``TF_LoadSessionFromSavedModel``,
``TF_SessionRun``).

Imports only the standard library, NumPy, TensorFlow and the protos, so it runs under the server's TensorFlow.
"""

import ctypes
import functools
import pathlib

import numpy as np

# TensorFlow's Python modules before its C library: loading libtensorflow_cc.so.2 first (RTLD_GLOBAL) and
# importing TensorFlow afterwards crashed the process (BUILD_NOTES.md).
import tensorflow as tf  # isort: skip
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from fmnist_tf.serving.layout import DEFAULT_SIGNATURE, PREDICT_METHODS, SERVE_TAG, ServingCheckError

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
