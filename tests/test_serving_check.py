"""Exports loaded by TensorFlow's C++ SavedModel loader (the one TF Serving uses), and the pre-flight check.

Each model kind is trained briefly on real data (one epoch on a slice) and exported once; the C API
(``c_api.CSavedModel``, ctypes over the wheel's libtensorflow_cc.so.2) loads it with the tag "serve"
and runs it by the tensor names in the signatures, with no tf.saved_model.load.
"""

import dataclasses
import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO, error_lines

from fmnist_tf import configs, data, training
from fmnist_tf.serving import c_api, check, export, layout, model_config, signatures
from fmnist_tf.model import build_model, make_optimizer

KINDS = ("softmax", "mlp", "cnn")
# One epoch on slices: far above chance (0.1), and the cnn's few passes over 10,000 test images dominate.
TRAIN_EXAMPLES, VALIDATION_EXAMPLES = 2_000, 1_000


@pytest.fixture(scope="module")
def arrays():
    return data.load_splits(seed=0, source="idx")


def _traversable_dir(parent=None):
    # pytest's tmp_path sits under a 0700 folder, which the "readable by other users" check rightly flags.
    path = pathlib.Path(tempfile.mkdtemp(prefix="fmnist-serving-", dir=parent))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def outside():
    """A folder other users can enter (the parent of every export here), removed after the module."""
    path = _traversable_dir()
    yield path
    shutil.rmtree(path)


@pytest.fixture(scope="module")
def models_dir(outside):
    """One saved_models folder for every kind, as the default export dirs give."""
    return _traversable_dir(outside)


@dataclasses.dataclass
class Exported:
    kind: str
    base: object
    version: object
    probabilities: np.ndarray  # the Keras model's on the 10,000 test images
    figures: dict


def _train_and_export(kind, models_dir, arrays):
    tf.keras.utils.set_random_seed(0)
    model = build_model(kind)
    train, validation = (data.as_examples(arrays[name].blocks.unbatch().take(n), name) for name, n in
                         (("train", TRAIN_EXAMPLES), ("validation", VALIDATION_EXAMPLES)))  # fmt: skip
    history, _ = training.train(model, make_optimizer("adam"), train, validation, 1, 64, 0, tf.distribute.get_strategy(),
                                verbose=False)  # fmt: skip
    test_images, test_labels = data.to_numpy(arrays["test"])
    probabilities = np.concatenate([model(data.normalize(test_images[i : i + 2000])).numpy() for i in range(0, 10_000, 2000)])
    figures = {
        "val_accuracy": history["val_accuracy"][-1],
        "val_loss": history["val_loss"][-1],
        "test_accuracy": float(np.mean(probabilities.argmax(axis=1) == test_labels)),
        "test_loss": float(-np.mean(np.log(probabilities[np.arange(len(test_labels)), test_labels]))),
    }
    config = dataclasses.asdict(training.Config(model=kind, epochs=1, source="idx", verbose=False))
    base = models_dir / configs.model_name(kind)
    version = export.export_saved_model(
        model, base, warmup_images=test_images[:4], provenance=export.training_provenance(config, figures)
    )
    model_config.write_model_config(models_dir / layout.MODEL_CONFIG_FILE, base)
    return Exported(kind, base, version, probabilities, figures)


@pytest.fixture(scope="module")
def softmax_export(models_dir, arrays):
    return _train_and_export("softmax", models_dir, arrays)


@pytest.fixture(scope="module")
def mlp_export(models_dir, arrays):
    return _train_and_export("mlp", models_dir, arrays)


@pytest.fixture(scope="module")
def cnn_export(models_dir, arrays):
    return _train_and_export("cnn", models_dir, arrays)


@pytest.fixture(params=KINDS)
def exported(request):
    return request.getfixturevalue(f"{request.param}_export")


def test_the_cpp_loader_runs_serving_default_by_tensor_names_like_the_keras_model(exported, arrays):
    images, labels = data.to_numpy(arrays["test"])
    with c_api.CSavedModel(exported.version) as saved_model:
        signature = saved_model.meta_graph.signature_def["serving_default"]
        assert signature.method_name == "tensorflow/serving/predict"
        (input_info,) = signature.inputs.values()
        names = {alias: info.name for alias, info in signature.outputs.items()}
        aliases = sorted(names)
        # 1,000 a request: the signatures refuse more than MAX_BATCH (signatures.py).
        parts = [saved_model.run({input_info.name: tf.make_tensor_proto(images[i : i + 1000])}, [names[a] for a in aliases])
                 for i in range(0, len(images), 1000)]  # fmt: skip
        outputs = {alias: np.concatenate([part[k] for part in parts]) for k, alias in enumerate(aliases)}
    assert len(images) == 10_000
    np.testing.assert_allclose(outputs["probabilities"], exported.probabilities, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(outputs["class_id"], exported.probabilities.argmax(axis=1))
    assert [name.decode() for name in outputs["class_name"][:50]] == [data.CLASS_NAMES[i] for i in outputs["class_id"][:50]]
    assert np.mean(outputs["class_id"] == labels) == pytest.approx(exported.figures["test_accuracy"], abs=2e-4)


def test_every_warmup_record_replays_in_the_cpp_loader(exported, arrays):
    from tensorflow_serving.apis import prediction_log_pb2

    expected = exported.probabilities[:4].argmax(axis=1)
    path = exported.version / layout.WARMUP_FILE
    records = [prediction_log_pb2.PredictionLog.FromString(r) for r in tf.data.TFRecordDataset(str(path)).as_numpy_iterator()]
    with c_api.CSavedModel(exported.version) as saved_model:
        assert check.replay_warmup(saved_model, exported.version) == len(records) == 3
        for record in records:
            request = record.predict_log.request
            outputs = saved_model.predict(request)
            assert request.model_spec.name == exported.base.name
            np.testing.assert_array_equal(outputs["class_id"], expected, err_msg=request.model_spec.signature_name)


def test_the_check_passes_and_models_config_lists_each_kind_side_by_side(softmax_export, mlp_export, cnn_export, models_dir):
    checks, provenance = check.run_checks(softmax_export.base)
    assert [c.name for c in checks if not c.ok] == []
    names = [c.name for c in checks]
    assert names[0] == "C++ loader" and {"warmup", "test accuracy", "readable by other users", "models.config"} <= set(names)
    assert [n for n in names if n.startswith("signature ")] == [f"signature {s}" for s in sorted(signatures.SIGNATURE_INPUTS)]
    assert provenance["model"] == "softmax" and provenance["figures"] == softmax_export.figures
    assert provenance["data_sha256"] == data.registered_checksums()
    config = layout.read_model_config(models_dir / layout.MODEL_CONFIG_FILE)
    listed = {e.name: e.base_path for e in config.model_config_list.config}
    exports = (softmax_export, mlp_export, cnn_export)
    assert listed == {e.base.name: str(e.base.resolve()) for e in exports}
    assert sorted(listed) == ["fashion_mnist", "fashion_mnist_cnn", "fashion_mnist_mlp"]


@pytest.mark.parametrize(
    "name, expected",
    [("1", 1), ("007", 7), (" 3\t", 3), ("+4", 4), ("-2", -2), ("9223372036854775807", 2**63 - 1),
     ("9223372036854775808", None), ("1a", None), ("", None), ("+", None), (".tmp-123-ab12", None), ("\u0661", None)],
)  # fmt: skip
def test_version_folder_names_are_read_as_tf_serving_reads_them(name, expected):
    assert layout.version_number(name) == expected


@pytest.fixture
def softmax_copy(softmax_export, outside):
    """A copy of the softmax export (version 1) with its own models.config, to damage."""
    base = _traversable_dir(outside) / "fashion_mnist"
    shutil.copytree(softmax_export.version, base / "1")
    model_config.write_model_config(base.parent / layout.MODEL_CONFIG_FILE, base)
    return base


def _failed(base):
    checks, _ = check.run_checks(base)
    return {c.name: c.detail for c in checks if not c.ok}


def test_the_check_names_each_problem(softmax_copy):
    version = softmax_copy / "1"
    (version / "variables" / "variables.index").chmod(0o600)
    (softmax_copy.parent / layout.MODEL_CONFIG_FILE).write_text('model_config_list { config { name: "x" base_path: "/nowhere" } }')
    with open(version / layout.WARMUP_FILE, "ab") as f:
        f.write(b"\x00" * 20)  # a truncated extra record
    failed = _failed(softmax_copy)
    assert set(failed) == {"readable by other users", "models.config", "warmup"}
    assert "variables.index (-rw-------: others cannot read it)" in failed["readable by other users"]
    assert f"does not list {softmax_copy}" in failed["models.config"] and "/nowhere holds no version" in failed["models.config"]
    assert "not TFRecord data" in failed["warmup"]


def test_a_version_the_cpp_loader_cannot_load_fails_the_check(softmax_copy):
    (softmax_copy / "1" / "variables" / "variables.data-00000-of-00001").write_bytes(b"")
    failed = _failed(softmax_copy)
    # TF's own reason (here "Read less bytes than requested" in RestoreV2); nothing is run on it after.
    assert list(failed) == ["C++ loader"] and "TensorFlow's C++ SavedModel loader: " in failed["C++ loader"]


def test_a_highest_version_that_is_not_a_saved_model_stops_the_check(softmax_copy):
    (softmax_copy / "2").write_text("")  # TF Serving takes a file named 2 for version 2 too
    with pytest.raises(layout.ServingCheckError, match="serve version 2 .* holds no saved_model.pb"):
        check.run_checks(softmax_copy)


def test_a_damaged_test_file_is_named(raw_copy):
    images = raw_copy / data.RAW_FILES["test"][0]
    images.write_bytes(images.read_bytes()[:-100])  # truncated: gzip's size field no longer matches
    with pytest.raises(layout.ServingCheckError, match=re.escape(f"cannot read the test files in {raw_copy}: {images}: ")):
        check.read_test_set(raw_copy)


def test_check_serving_script_exits_non_zero_with_the_reason(softmax_copy):
    (softmax_copy / "1").chmod(0o700)
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "check_serving.py"), f"--model_dir={softmax_copy}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert any(line.startswith("FAIL  readable by other users:") and "drwx------" in line for line in lines)
    assert sum(line.startswith("ok    ") for line in lines) == 8
    assert error_lines(done) == ["error: 1 of 9 checks failed: readable by other users"]
    provenance = json.loads(done.stdout[done.stdout.index("{"):])
    assert provenance["model"] == "softmax"
