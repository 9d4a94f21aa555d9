"""The exported SavedModel as TF Serving and other TF code see it: layout, signatures, warmup, config."""

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from fmnist_tf import data, export, training
from fmnist_tf.model import build_model, make_optimizer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A softmax model trained 5 epochs (the main job's setting) on the real data, exported once: (model, base path, version)."""
    tf.keras.utils.set_random_seed(0)
    arrays = {name: data.to_numpy(ds) for name, ds in data.load_splits(seed=0, source="idx").items()}
    model = build_model()
    strategy = tf.distribute.get_strategy()
    training.train(model, make_optimizer(), arrays["train"], arrays["validation"], 5, 32, 0, strategy, verbose=False)
    base = tmp_path_factory.mktemp("models") / "fashion_mnist"
    test_images, test_labels = arrays["test"]
    version = export.export_saved_model(model, base, warmup_images=test_images[:4])
    return model, base, version, test_images, test_labels


def _tree_digest(path):
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            h.update(os.path.relpath(full, path).encode())
            h.update(open(full, "rb").read())
    return h.hexdigest()


def test_versions_are_integers_counting_up_and_old_ones_untouched(trained):
    model, base, version, images, _ = trained
    assert version == base / "1"
    before = _tree_digest(version)
    second = export.export_saved_model(model, base)
    assert second == base / "2"
    assert _tree_digest(version) == before
    assert export.versions(base) == [1, 2]
    assert export.latest_version_path(base) == second
    assert [p.name for p in base.iterdir() if p.name.startswith(export.TMP_PREFIX)] == []
    (base / "2").rename(base / ".scratch")  # leave the fixture's base path as it was, minus version 2
    assert export.versions(base) == [1]


def test_a_failed_export_leaves_no_version_and_others_unchanged(trained, monkeypatch):
    model, base, version, images, _ = trained
    before = _tree_digest(version)
    listing = sorted(p.name for p in base.iterdir())

    def broken(version_dir, logs):
        raise OSError("disk full")

    monkeypatch.setattr(export, "_write_warmup", broken)
    with pytest.raises(OSError, match="disk full"):
        export.export_saved_model(model, base, warmup_images=images[:2])
    assert sorted(p.name for p in base.iterdir()) == listing
    assert _tree_digest(version) == before


def test_unwritable_export_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(export.ExportError, match="cannot be written"):
        export.check_writable(blocker / "fashion_mnist")


def test_serving_default_equals_keras_on_the_pipeline_batch(trained):
    model, base, version, images, labels = trained
    loaded = tf.saved_model.load(str(version))
    ds = data.load_split("test", "idx").take(256)
    raw_images, _ = data.to_numpy(ds)
    pipeline_batch, _ = next(iter(data.evaluation_pipeline(ds, 256)))
    expected = model.predict(pipeline_batch, verbose=0)
    out = loaded.signatures["serving_default"](images=tf.constant(raw_images))
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(out["class_id"].numpy(), expected.argmax(axis=1))
    names = [n.decode() for n in out["class_name"].numpy()]
    assert names == [data.CLASS_NAMES[i] for i in expected.argmax(axis=1)]


def test_all_signatures_agree(trained):
    _, _, version, images, _ = trained
    signatures = tf.saved_model.load(str(version)).signatures
    batch = images[:16]
    by_raw = signatures[export.SERVING_DEFAULT](images=tf.constant(batch))
    by_pixels = signatures[export.SERVING_NORMALIZED](pixels=data.normalize(batch))
    pngs = tf.constant([export.encode_png(image) for image in batch])
    by_png = signatures[export.SERVING_PNG](png_bytes=pngs)
    for other in (by_pixels, by_png):
        # Same math, separately compiled graphs: equal to float32 rounding, same decisions.
        np.testing.assert_allclose(other["probabilities"].numpy(), by_raw["probabilities"].numpy(), atol=1e-6)
        for name in ("class_id", "class_name"):
            np.testing.assert_array_equal(other[name].numpy(), by_raw[name].numpy())


def test_saved_model_cli_lists_the_signatures(trained):
    _, _, version, _, _ = trained
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run([cli, "show", "--dir", str(version), "--all"], capture_output=True, text=True, check=True)
    text = shown.stdout
    for signature, input_name, dtype, shape in [
        ("serving_default", "images", "DT_UINT8", "(-1, 28, 28)"),
        ("serving_normalized", "pixels", "DT_FLOAT", "(-1, 784)"),
        ("serving_png", "png_bytes", "DT_STRING", "(-1)"),
    ]:
        block = text.split(f"signature_def['{signature}']:")[1].split("signature_def[")[0]
        assert f"inputs['{input_name}'] tensor_info:\n        dtype: {dtype}\n        shape: {shape}" in block
        assert "outputs['probabilities'] tensor_info:\n        dtype: DT_FLOAT\n        shape: (-1, 10)" in block
        assert "outputs['class_id'] tensor_info:\n        dtype: DT_INT32" in block
        assert "outputs['class_name'] tensor_info:\n        dtype: DT_STRING" in block
        assert "Method name is: tensorflow/serving/predict" in block


def test_warmup_records_replay_against_the_model(trained):
    _, _, version, images, _ = trained
    path = version / "assets.extra" / "tf_serving_warmup_requests"
    signatures = tf.saved_model.load(str(version)).signatures
    seen = []
    for record in tf.data.TFRecordDataset(str(path)):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        request = log.predict_log.request
        assert request.model_spec.name == "fashion_mnist"
        inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        out = signatures[request.model_spec.signature_name](**{k: tf.constant(v) for k, v in inputs.items()})
        assert out["probabilities"].shape == (4, 10)
        seen.append(request.model_spec.signature_name)
    assert sorted(seen) == sorted(export.SIGNATURE_INPUTS)


def test_model_config_parses_as_tf_serving_config(trained, tmp_path):
    _, base, _, _, _ = trained
    path = export.write_model_config(tmp_path / "models.config", base)
    config = text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())
    (entry,) = config.model_config_list.config
    assert entry.name == "fashion_mnist"
    assert entry.base_path == str(base.resolve()) and os.path.isabs(entry.base_path)
    assert entry.model_platform == "tensorflow"


def _rest_predict(signatures, body):
    """What TF Serving's REST predict does with a JSON body: row or columnar format, b64 for strings."""
    request = json.loads(body)
    signature = signatures[request.get("signature_name", "serving_default")]
    ((input_name, spec),) = signature.structured_input_signature[1].items()
    rows = request["instances"] if "instances" in request else request["inputs"]

    def decode(value):
        if isinstance(value, dict) and "b64" in value:
            return base64.b64decode(value["b64"])
        return [decode(v) for v in value] if isinstance(value, list) else value

    out = signature(**{input_name: tf.constant(decode(rows), dtype=spec.dtype)})
    return {"predictions": [dict(zip(out, row)) for row in zip(*(v.numpy().tolist() for v in out.values()))]}


def test_rest_shaped_requests(trained):
    model, _, version, images, labels = trained
    signatures = tf.saved_model.load(str(version)).signatures
    body = json.dumps({"instances": images[:3].tolist()})
    rows = _rest_predict(signatures, body)["predictions"]
    expected = model.predict(data.normalize(images[:3]), verbose=0).argmax(axis=1)
    assert [row["class_id"] for row in rows] == expected.tolist()
    png = base64.b64encode(export.encode_png(images[0])).decode()
    body = json.dumps({"signature_name": "serving_png", "instances": [{"b64": png}]})
    (row,) = _rest_predict(signatures, body)["predictions"]
    assert row["class_id"] == expected[0] and row["class_name"] == data.CLASS_NAMES[expected[0]].encode()


LOAD_WITHOUT_PACKAGE = textwrap.dedent(
    """
    import sys
    sys.modules["fmnist_tf"] = None  # any import of the package now fails
    try:
        import fmnist_tf
        raise SystemExit("fmnist_tf importable")
    except ImportError:
        pass
    import numpy as np, tensorflow as tf, keras
    version, images_path, labels_path = sys.argv[1:]
    images, labels = np.load(images_path), np.load(labels_path)
    serve = tf.saved_model.load(version).signatures["serving_default"]
    ids = serve(images=tf.constant(images))["class_id"].numpy()
    layer = keras.layers.TFSMLayer(version, call_endpoint="serving_default")
    ids2 = layer(tf.constant(images))["class_id"].numpy()
    print((ids == labels).mean(), (ids2 == labels).mean())
    """
)


def test_other_tf_code_loads_it_without_the_package(trained, tmp_path):
    _, _, version, images, labels = trained
    np.save(tmp_path / "x.npy", images)
    np.save(tmp_path / "y.npy", labels)
    done = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_PACKAGE, str(version), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    by_signature, by_layer = map(float, done.stdout.split())
    assert len(labels) == 10_000
    assert by_signature >= 0.83 and by_layer == by_signature


def _png(shape):
    return tf.io.encode_png(tf.zeros(shape, tf.uint8)).numpy()


@pytest.mark.parametrize(
    "signature, inputs, expected",
    [
        ("serving_default", {"images": tf.zeros([2, 28, 28], tf.float32)}, "expected to be a uint8 tensor"),
        ("serving_default", {"images": tf.zeros([28, 28], tf.uint8)}, "images_must_be_batch_x_28_x_28"),
        ("serving_default", {"images": tf.zeros([1, 32, 32], tf.uint8)}, "images_must_be_batch_x_28_x_28"),
        ("serving_normalized", {"pixels": tf.zeros([1, 783])}, "pixels_must_be_batch_x_784"),
        ("serving_png", {"png_bytes": tf.constant([b"not a png"])}, "Unknown image file format"),
        ("serving_png", {"png_bytes": tf.constant([_png([32, 32, 1])])}, "png_must_be_28x28_grayscale"),
        ("serving_png", {"png_bytes": tf.constant([_png([28, 28, 3])])}, "png_must_be_28x28_grayscale"),
    ],
)
def test_bad_requests_fail_clearly_and_the_model_keeps_serving(trained, signature, inputs, expected):
    _, _, version, images, _ = trained
    signatures = tf.saved_model.load(str(version)).signatures
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(expected)):
        signatures[signature](**inputs)
    out = signatures["serving_default"](images=tf.constant(images[:3]))
    assert out["probabilities"].shape == (3, 10)


@pytest.mark.parametrize(
    "signature, inputs",
    [
        ("serving_default", {"images": tf.zeros([0, 28, 28], tf.uint8)}),
        ("serving_normalized", {"pixels": tf.zeros([0, 784])}),
        ("serving_png", {"png_bytes": tf.zeros([0], tf.string)}),
    ],
)
def test_an_empty_batch_gets_empty_outputs(trained, signature, inputs):
    _, _, version, _, _ = trained
    out = tf.saved_model.load(str(version)).signatures[signature](**inputs)
    assert out["probabilities"].shape == (0, 10) and out["class_id"].shape == (0,) and out["class_name"].shape == (0,)
