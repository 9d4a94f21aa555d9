"""The exported SavedModel as TF Serving and other TF code see it: layout, signatures, warmup, config."""

import base64
import hashlib
import json
import os
import pathlib
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import textwrap
import zlib

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from fmnist_tf import data, training
from fmnist_tf.serving import export, layout
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
    by_raw = signatures[export.SERVING_DEFAULT](images=tf.constant(batch))
    by_pixels = signatures[export.SERVING_NORMALIZED](pixels=data.normalize(batch))
    pngs = tf.constant([export.encode_png(image) for image in batch])
    by_png = signatures[export.SERVING_PNG](png_bytes=pngs)
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
    assert sorted(seen) == sorted(export.SIGNATURE_INPUTS)


def test_model_config_parses_as_tf_serving_config(trained, tmp_path):
    _, base, _, _, _ = trained
    path = export.write_model_config(tmp_path / "models.config", base)
    config = text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())
    (entry,) = config.model_config_list.config
    assert entry.name == "fashion_mnist"
    assert entry.base_path == str(base.resolve()) and os.path.isabs(entry.base_path)
    assert entry.model_platform == "tensorflow"


def _copy_export(version, base):
    """A base path holding a copy of ``version`` as its version 1 (cheaper than another export)."""
    shutil.copytree(version, base / "1")
    return base


def _parse_config(path):
    return text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())


def test_model_config_round_trips_an_odd_base_path(trained, tmp_path):
    _, _, version, _, _ = trained
    base = _copy_export(version, tmp_path / 'my "best" models' / 'fashion "mnist" v2')
    path = export.write_model_config(base.parent / "models.config", base)
    (entry,) = _parse_config(path).model_config_list.config
    assert entry.base_path == str(base.resolve()) and entry.name == base.name


def test_model_config_keeps_the_users_entries_and_updates_only_this_model(trained, tmp_path):
    _, _, version, _, _ = trained
    base = _copy_export(version, tmp_path / "fashion_mnist")
    path = tmp_path / "models.config"
    users = (
        "# the user's own config\n"
        'model_config_list { config { name: "theirs" base_path: "/srv/models/theirs" model_platform: "tensorflow" '
        "model_version_policy { all {} } } "
        f'config {{ name: "fashion_mnist" base_path: "{base.resolve()}" model_platform: "tensorflow" '
        'version_labels { key: "stable" value: 1 } } }\n'
    )
    path.write_text(users)
    export.write_model_config(path, base)
    assert path.read_text() == users  # listed already: not rewritten
    theirs, mine = _parse_config(path).model_config_list.config
    assert (theirs.name, theirs.base_path, theirs.model_version_policy.WhichOneof("policy_choice")) == (
        "theirs", "/srv/models/theirs", "all"
    )
    assert (mine.name, mine.base_path, dict(mine.version_labels)) == ("fashion_mnist", str(base.resolve()), {"stable": 1})
    # Several model kinds side by side: each its own entry.
    mlp = _copy_export(version, tmp_path / "fashion_mnist_mlp")
    export.write_model_config(path, mlp)
    assert [e.name for e in _parse_config(path).model_config_list.config] == ["theirs", "fashion_mnist", "fashion_mnist_mlp"]
    assert stat.S_IMODE(path.stat().st_mode) & stat.S_IROTH


def test_model_config_never_lists_a_folder_that_is_not_this_model(trained, tmp_path):
    _, _, version, _, _ = trained
    (tmp_path / "runs" / "3").mkdir(parents=True)  # a digit-named child does not make a model
    _copy_export(version, tmp_path / "other_export")  # a real export beside it: not ours to list either
    base = _copy_export(version, tmp_path / "fashion_mnist")
    path = export.write_model_config(tmp_path / "models.config", base)
    assert [e.name for e in _parse_config(path).model_config_list.config] == ["fashion_mnist"]
    with pytest.raises(export.ExportError, match="holds no complete version"):
        export.write_model_config(path, tmp_path / "runs")


def test_a_malformed_model_config_is_named_and_left_alone(trained, tmp_path):
    _, _, version, _, _ = trained
    base = _copy_export(version, tmp_path / "fashion_mnist")
    path = tmp_path / "models.config"
    text = 'model_config_list { config { name: "a" base_path: "/x"\n'  # unbalanced: TF Serving would not start
    path.write_text(text)
    with pytest.raises(layout.ModelConfigError, match=re.escape(str(path))):
        export.write_model_config(path, base)
    assert path.read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fashion_mnist", "models.config"]


def _modes(version):
    found = {}
    for root, folders, files in os.walk(version):
        for name in folders + files:
            path = os.path.join(root, name)
            found[os.path.relpath(path, version)] = stat.S_IMODE(os.stat(path).st_mode)
    return found


@pytest.mark.parametrize(
    "umask, folder_mode, file_mode", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)], ids=["umask022", "umask027"]
)
def test_a_version_gets_the_modes_of_plain_mkdir_and_open(trained, tmp_path, umask, folder_mode, file_mode):
    model, _, _, _, _ = trained
    previous = os.umask(umask)
    try:
        version = export.export_saved_model(model, tmp_path / "fashion_mnist", warmup_images=np.zeros((1, 28, 28), np.uint8))
    finally:
        os.umask(previous)
    modes = _modes(version)
    assert {"saved_model.pb", "variables", export.WARMUP_FILE, export.PROVENANCE_FILE} <= set(modes)
    assert stat.S_IMODE(version.stat().st_mode) == folder_mode
    for name, mode in modes.items():
        assert mode == (folder_mode if (version / name).is_dir() else file_mode), name


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("runuser"), reason="needs root and runuser")
def test_another_user_can_read_every_file_of_a_version(trained):
    model, _, _, _, _ = trained
    # pytest's tmp_path sits under a 0700 folder: the other user needs a folder it can enter.
    parent = pathlib.Path(tempfile.mkdtemp(prefix="fmnist-modes-"))
    try:
        parent.chmod(0o755)
        previous = os.umask(0o022)
        try:
            version = export.export_saved_model(model, parent / "fashion_mnist", warmup_images=np.zeros((1, 28, 28), np.uint8))
        finally:
            os.umask(previous)
        paths = [str(version), *(str(version / name) for name in _modes(version))]
        # As nobody: each folder must be enterable and listable, each file readable; print what is not.
        script = 'for p; do if [ -d "$p" ]; then [ -r "$p" ] && [ -x "$p" ] || echo "$p"; else [ -r "$p" ] || echo "$p"; fi; done'
        check = ["runuser", "-u", "nobody", "--", "sh", "-c", script, "sh"]
        done = subprocess.run(check + paths, capture_output=True, text=True, check=True)
        assert done.stdout == "" and len(paths) >= 10
        version.chmod(0o700)  # what a mkdtemp folder renamed into place used to give
        done = subprocess.run(check + paths[:2], capture_output=True, text=True, check=True)
        assert done.stdout.split() == paths[:2]
    finally:
        shutil.rmtree(parent)


def test_provenance_is_recorded_in_the_version(trained, tmp_path):
    model, _, _, _, _ = trained
    provenance = {"model": "softmax", "figures": {"test_accuracy": 0.5}}
    version = export.export_saved_model(model, tmp_path / "fashion_mnist", provenance=provenance)
    record = json.loads((version / export.PROVENANCE_FILE).read_text())
    assert record["model"] == "softmax" and record["figures"] == {"test_accuracy": 0.5}
    assert record["model_name"] == "fashion_mnist"
    assert record["versions"]["tensorflow"] == tf.__version__ and record["versions"]["keras"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", record["exported_at"])


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
        ("serving_png", {"png_bytes": tf.constant([_png([28, 28, 1])] * (export.MAX_PNG_BATCH + 1))},
         f"png_batch_too_large: serving_png takes at most {export.MAX_PNG_BATCH} PNGs a request, got] [{export.MAX_PNG_BATCH + 1}]"),
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
    bomb = _bomb_png()[: export.MAX_PNG_BYTES]  # its start, under the size cap: refused for the size it declares
    valid = serve(png_bytes=tf.constant([export.encode_png(images[0])]))  # warm-up: the graph runs once
    assert valid["probabilities"].shape == (1, 10)
    open("/proc/self/clear_refs", "w").write("5")  # restart the peak-RSS count (VmHWM) from the current RSS
    rss_before = _memory_kb("VmRSS")
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape("[[0]] [[16000 16000 8 0]]")):
        serve(png_bytes=tf.constant([bomb]))
    peak_growth_mb = (_memory_kb("VmHWM") - rss_before) / 1024
    # Decoding it would take 256 MB; refusing it reads its 26 header bytes.
    assert peak_growth_mb < 64, peak_growth_mb
