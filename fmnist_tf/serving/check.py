"""Pre-flight checks of an export as TF Serving uses it, with TensorFlow's own C++ SavedModel loader (``c_api``):
loads, signatures, warmup replayed, finite weights, test accuracy through serving_default, readable by other
users, listed in ``models.config`` (TF Serving's rules: ``layout``).

Predict as TF Serving runs it (servables/tensorflow/predict_util.cc): the request's inputs (TensorProtos,
converted with ``Tensor::FromProto``) fed to the signature's input tensor names and all its output tensor names
fetched in one ``Session::Run``.

Imports only the standard library, NumPy, TensorFlow, the TF Serving API protos and fmnist_tf's ``storage``,
``layout``, ``c_api`` and TF-free data facts (never the exporter), so it runs under the TensorFlow the server embeds:
``python -m fmnist_tf.cli.check_serving --model_dir=...`` from a checkout with that TensorFlow installed.
"""

import dataclasses
import gzip
import os
import pathlib
import stat
import time

import numpy as np
import tensorflow as tf
from google.protobuf import message
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import prediction_log_pb2

from fmnist_tf import storage
from fmnist_tf.data import files
from fmnist_tf.serving.c_api import CSavedModel
from fmnist_tf.serving.layout import (
    CLASS_ID,
    DEFAULT_SIGNATURE,
    MAX_WARMUP_RECORDS,
    PREDICT_METHODS,
    PROBABILITIES,
    VARIABLES_PREFIX,
    WARMUP_FILE,
    ModelConfigError,
    ServingCheckError,
    child,
    model_config_path,
    predict_request,
    read_model_config,
    read_provenance,
    request_batches,
    resolve_export,
    version_paths,
)

# A version's test accuracy through serving_default may differ from the training run's figure by a few
# near-tied images (separately compiled graphs); more than this many in 10,000 means another model.
ACCURACY_TOLERANCE = 0.002


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
        if storage.is_url(entry.base_path):
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
    paths = [pathlib.Path(raw_dir) / name for name in files.RAW_FILES["test"]]
    try:
        counts = [files.read_idx_header(path, kind) for path, kind in zip(paths, ("images", "labels"))]
        images, labels = (gzip.open(path).read() for path in paths)
    except (files.DataError, OSError, EOFError) as e:
        raise ServingCheckError(f"cannot read the test files in {raw_dir}: {e}") from e
    if counts[0] != counts[1]:
        raise ServingCheckError(f"{paths[0]} holds {counts[0]} images but {paths[1]} {counts[1]} labels")
    images = np.frombuffer(images, np.uint8, offset=files.IMAGES_HEADER_BYTES).reshape(counts[0], *files.IMAGE_SHAPE)
    return images, np.frombuffer(labels, np.uint8, offset=files.LABELS_HEADER_BYTES).astype(np.int64)


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
    parts = [saved_model.predict(predict_request(DEFAULT_SIGNATURE, {alias: batch})) for batch in request_batches(images)]
    seconds = time.perf_counter() - began
    outputs = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    if not {CLASS_ID, PROBABILITIES} & set(outputs):
        return Check("test accuracy", False, f"{DEFAULT_SIGNATURE} has neither a class_id nor a probabilities output")
    predicted = outputs[CLASS_ID] if CLASS_ID in outputs else outputs[PROBABILITIES].argmax(axis=1)
    accuracy = float(np.mean(predicted == labels))
    detail = f"{accuracy:.4f} on {len(labels):,} images through {DEFAULT_SIGNATURE} ({seconds:.2f} s)"
    ok = True
    if PROBABILITIES in outputs and not np.all(np.isfinite(outputs[PROBABILITIES])):
        ok, detail = False, detail + "; probabilities hold NaN or inf"
    elif PROBABILITIES in outputs and not np.array_equal(predicted, outputs[PROBABILITIES].argmax(axis=1)):
        ok, detail = False, detail + "; class_id is not the argmax of probabilities"
    recorded = (provenance or {}).get("figures", {}).get("test_accuracy")
    if recorded is not None:
        ok = ok and abs(accuracy - recorded) <= ACCURACY_TOLERANCE
        detail += f"; training measured {recorded:.4f}"
    return Check("test accuracy", ok, detail)


def finite_weights_check(version_dir):
    """Whether every floating-point variable of the version is finite: a diverged model answers NaN."""
    prefix = str(child(version_dir, VARIABLES_PREFIX))
    try:
        reader = tf.compat.v1.train.NewCheckpointReader(prefix)
        names = [name for name, dtype in sorted(reader.get_variable_to_dtype_map().items()) if dtype.is_floating]
        nonfinite = [name for name in names if not np.all(np.isfinite(reader.get_tensor(name)))]
    except (tf.errors.OpError, IndexError, ValueError) as e:
        return Check("finite weights", False, f"{prefix}: cannot be read: {storage.reason(e)}")
    if nonfinite:
        return Check("finite weights", False, f"{len(nonfinite)} of {len(names)} variables hold NaN or inf "
                     f"(first: {nonfinite[0]}): the model diverged in training; do not serve it")  # fmt: skip
    return Check("finite weights", True, f"all {len(names)} floating-point variables finite")


def run_checks(model_dir, raw_dir=files.DEFAULT_RAW_DIR):
    """Every pre-flight check of the export at ``model_dir`` (base path or version): (list of Check, provenance).

    Raises ServingCheckError only when ``model_dir`` is not an export at all.
    """
    # Resolved: this check reads local folders, and models.config lists absolute base paths.
    base_path, number, version_dir = resolve_export(pathlib.Path(model_dir).resolve())
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
