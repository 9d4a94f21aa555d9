"""What a version answers: its three signatures agree with Keras and with each other, through TF Serving's
formats (warmup records, REST bodies, saved_model_cli) and plain TF without the package; bad requests fail in a
named op and the model keeps serving."""

import base64
import json
import os
import re
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from fmnist_tf import data, training
from fmnist_tf.serving import export
from fmnist_tf.serving.signatures import (
    MAX_PNG_BATCH,
    MAX_PNG_BYTES,
    SERVING_DEFAULT,
    SERVING_NORMALIZED,
    SERVING_PNG,
    SIGNATURE_INPUTS,
    encode_png,
)
from fmnist_tf.model import build_model, make_optimizer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A softmax model trained 5 epochs (the main job's setting) on the real data, exported once: (model, base path, version)."""
    tf.keras.utils.set_random_seed(0)
    splits = data.load_splits(seed=0, source="idx")
    model = build_model()
    strategy = tf.distribute.get_strategy()
    training.train(model, make_optimizer(), splits["train"], splits["validation"], 5, 32, 0, strategy, verbose=False)
    base = tmp_path_factory.mktemp("models") / "fashion_mnist"
    test_images, test_labels = data.to_numpy(splits["test"])
    version = export.export_saved_model(model, base, warmup_images=test_images[:4])
    return model, base, version, test_images, test_labels


def test_serving_default_equals_keras_on_the_pipeline_batch(trained):
    model, base, version, images, labels = trained
    loaded = tf.saved_model.load(str(version))
    test = data.load_examples("test", "idx")
    pipeline_batch, _ = next(iter(data.evaluation_data(test, 256)))
    raw_images, _ = data.to_numpy(test.blocks.take(1))
    raw_images = raw_images[:256]
    expected = model.predict(pipeline_batch, verbose=0)
    out = loaded.signatures["serving_default"](images=tf.constant(raw_images))
    # Separately compiled float32 graphs: equal to a few float32 roundings of the softmax (seen: 1.3e-6).
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(out["class_id"].numpy(), expected.argmax(axis=1))
    names = [n.decode() for n in out["class_name"].numpy()]
    assert names == [data.CLASS_NAMES[i] for i in expected.argmax(axis=1)]


def test_all_signatures_agree(trained):
    _, _, version, images, _ = trained
    signatures = tf.saved_model.load(str(version)).signatures
    batch = images[:16]
    by_raw = signatures[SERVING_DEFAULT](images=tf.constant(batch))
    by_pixels = signatures[SERVING_NORMALIZED](pixels=data.normalize(batch))
    pngs = tf.constant([encode_png(image) for image in batch])
    by_png = signatures[SERVING_PNG](png_bytes=pngs)
    for other in (by_pixels, by_png):
        # Same math, separately compiled graphs: equal to float32 rounding, same decisions.
        np.testing.assert_allclose(other["probabilities"].numpy(), by_raw["probabilities"].numpy(), atol=1e-6)
        for name in ("class_id", "class_name"):
            np.testing.assert_array_equal(other[name].numpy(), by_raw[name].numpy())


@pytest.mark.slow
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
    assert sorted(seen) == sorted(SIGNATURE_INPUTS)


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
    png = base64.b64encode(encode_png(images[0])).decode()
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
    layer = keras.layers.TFSMLayer(version, call_endpoint="serving_default")
    batches = [tf.constant(images[i : i + 1000]) for i in range(0, len(images), 1000)]  # 1,024 a request at most
    ids = np.concatenate([serve(images=batch)["class_id"].numpy() for batch in batches])
    ids2 = np.concatenate([layer(batch)["class_id"].numpy() for batch in batches])
    print((ids == labels).mean(), (ids2 == labels).mean())
    """
)


@pytest.mark.slow
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
        # serving_png reads each PNG's header first: (index; width, height, bit depth, colour type) of the first refused.
        ("serving_png", {"png_bytes": tf.constant([b"not a png"])}, "[[0]] [[-1 -1 -1 -1]]"),
        ("serving_png", {"png_bytes": tf.constant([_png([28, 28, 1]), _png([32, 32, 1])])}, "[[1]] [[32 32 8 0]]"),
        ("serving_png", {"png_bytes": tf.constant([_png([28, 28, 3])])}, "[[0]] [[28 28 8 2]]"),
        ("serving_png", {"png_bytes": tf.constant([tf.io.encode_png(tf.zeros([28, 28, 1], tf.uint16)).numpy()])},
         "[[0]] [[28 28 16 0]]"),
        ("serving_png", {"png_bytes": tf.constant([_png([28, 28, 1])] * (MAX_PNG_BATCH + 1))},
         f"png_batch_too_large: serving_png takes at most {MAX_PNG_BATCH} PNGs a request, got] [{MAX_PNG_BATCH + 1}]"),
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


def _bomb_png(side=16_000, rows=1_000):
    """A valid 8-bit grayscale PNG of side x side black pixels (256 MB decoded) in about 250 KB.

    Raw deflate blocks that end in a full flush decode on their own, so one compressed block of ``rows``
    rows is repeated; the zlib wrapper's Adler-32 of all-zero data of length n is (n mod 65521) << 16 | 1.
    """
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes((side + 1) * rows)) + compressor.flush(zlib.Z_FULL_FLUSH)
    final = zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    adler = struct.pack(">I", ((side + 1) * side % 65521) << 16 | 1)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = b"\x78\xda" + block * (side // rows) + final + adler
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _memory_kb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def test_a_png_declaring_a_huge_image_is_refused_before_it_is_decoded(trained):
    _, _, version, images, _ = trained
    serve = tf.saved_model.load(str(version)).signatures["serving_png"]
    bomb = _bomb_png()[: MAX_PNG_BYTES]  # its start, under the size cap: refused for the size it declares
    valid = serve(png_bytes=tf.constant([encode_png(images[0])]))  # warm-up: the graph runs once
    assert valid["probabilities"].shape == (1, 10)
    open("/proc/self/clear_refs", "w").write("5")  # restart the peak-RSS count (VmHWM) from the current RSS
    rss_before = _memory_kb("VmRSS")
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape("[[0]] [[16000 16000 8 0]]")):
        serve(png_bytes=tf.constant([bomb]))
    peak_growth_mb = (_memory_kb("VmHWM") - rss_before) / 1024
    # Decoding it would take 256 MB; refusing it reads its 26 header bytes.
    assert peak_growth_mb < 64, peak_growth_mb
