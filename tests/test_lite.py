"""LiteRT models of briefly trained exports of each model kind, run through the LiteRT interpreter on the real
test images and checked against the SavedModel they came from; evaluate.py on a .tflite; the one-line errors."""

import json
import re

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from conftest import error_lines, run_script
from fmnist_tf import data, evaluation, training
from fmnist_tf.serving import layout, lite

KINDS = ("softmax", "mlp", "cnn", "cnn_bn")


@pytest.fixture(scope="module")
def test_arrays():
    return data.load_arrays("test", source="idx")


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """kind -> version folder of a model trained one epoch on 6,000 real training images (brief, not good)."""
    splits = data.load_splits(seed=0, source="idx")
    small = {name: splits[name].blocks.unbatch().take(n) for name, n in
             (("train", 6000), ("validation", 1000), ("test", 1000))}  # fmt: skip
    base = tmp_path_factory.mktemp("models")
    versions = {}
    for kind in KINDS:
        config = training.Config(model=kind, epochs=1, source="idx", export_dir=str(base / kind), verbose=False)
        versions[kind] = training.run(config, datasets=small)["export_path"]
    return versions


@pytest.fixture(scope="module")
def converted(exports, tmp_path_factory):
    """kind -> (figures, out dir, finished process): softmax through scripts/export_lite.py as a user runs it
    (its --metrics_json read back), mlp, cnn and cnn_bn through lite.export_lite in-process (no process: None)."""
    out = tmp_path_factory.mktemp("lite")
    metrics = out / "softmax.json"
    done = run_script("export_lite.py", f"--model_dir={exports['softmax']}", f"--out_dir={out / 'softmax'}",
                      "--source=idx", f"--metrics_json={metrics}")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = {"softmax": (json.loads(metrics.read_text()), out / "softmax", done)}
    for kind in KINDS[1:]:
        results[kind] = (lite.export_lite(exports[kind], out / kind, source="idx"), out / kind, None)
    return results


def interpreter_probabilities(path, images):
    """The model's output for all ``images`` in one call, through the interpreter's plain tensor API (no
    signature runner): the input resized to the whole batch, as a client on a device would."""
    interpreter = Interpreter(model_path=str(path))
    (input_details,), (output_details,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.resize_tensor_input(input_details["index"], images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(input_details["index"], images)
    interpreter.invoke()
    return interpreter.get_tensor(output_details["index"])


def saved_model_classes(version, images):
    serve = tf.saved_model.load(str(version)).signatures["serving_default"]
    return np.concatenate(
        [serve(images=tf.constant(images[i : i + 1000]))["class_id"].numpy() for i in range(0, len(images), 1000)]
    )


@pytest.mark.parametrize("kind", KINDS)
def test_the_targets_hold_against_the_saved_model(kind, converted, exports):
    figures, out_dir, _ = converted[kind]
    assert figures["saved_model"]["path"] == str(exports[kind])
    saved_accuracy = figures["saved_model"]["test_accuracy"]
    assert saved_accuracy > 0.6  # one brief epoch, but a real model: far above chance (0.1)
    assert figures["float32"]["agreement"] >= 0.999
    assert abs(figures["int8"]["test_accuracy"] - saved_accuracy) <= 0.005
    assert figures["int8"]["bytes"] * 3 <= figures["float32"]["bytes"]
    for name, file_name in lite.MODEL_FILES.items():
        f = figures[name]
        assert f["path"] == str(out_dir / file_name) and f["bytes"] == (out_dir / file_name).stat().st_size
        assert 0 < f["latency_ms_p50"] < 50


# Recomputed for the two cheaper models only (the cnn's 10,000 convolutions twice over would double this file's
# time); the figures of all three come from the same code.
@pytest.mark.parametrize("kind", ["softmax", "mlp"])
def test_the_figures_are_what_the_interpreter_and_the_saved_model_give(kind, converted, exports, test_arrays):
    figures, out_dir, _ = converted[kind]
    images, labels = test_arrays
    reference = saved_model_classes(exports[kind], images)
    assert figures["saved_model"]["test_accuracy"] == np.mean(reference == labels)
    for name, file_name in lite.MODEL_FILES.items():
        classes = np.argmax(interpreter_probabilities(out_dir / file_name, images), axis=-1)
        assert figures[name]["test_accuracy"] == np.mean(classes == labels)
        assert figures[name]["agreement"] == np.mean(classes == reference)


@pytest.mark.parametrize("kind", KINDS)
def test_both_models_take_raw_pixels_return_probabilities_and_ship_the_class_names(kind, converted, test_arrays):
    _, out_dir, _ = converted[kind]
    images, _ = test_arrays
    assert (out_dir / lite.LABELS_FILE).read_text().splitlines() == list(data.CLASS_NAMES)
    whole = {name: interpreter_probabilities(out_dir / file_name, images[:64])
             for name, file_name in lite.MODEL_FILES.items()}  # fmt: skip
    for name, file_name in lite.MODEL_FILES.items():
        interpreter = Interpreter(model_path=str(out_dir / file_name))
        signature = {"inputs": ["images"], "outputs": ["probabilities"]}
        assert interpreter.get_signature_list() == {"serving_default": signature}
        runner = interpreter.get_signature_runner("serving_default")
        (input_details,) = runner.get_input_details().values()
        (output_details,) = runner.get_output_details().values()
        assert input_details["dtype"] == np.uint8 and list(input_details["shape_signature"]) == [-1, 28, 28]
        assert output_details["dtype"] == np.float32 and list(output_details["shape_signature"]) == [-1, 10]
        # Any batch size, one after another on one interpreter: 1, 7, then 64 gives what one call of 64 gave.
        for n in (1, 7, 64):
            probabilities = runner(images=images[:n])["probabilities"]
            assert probabilities.shape == (n, 10)
            np.testing.assert_array_equal(probabilities, whole[name][:n])
        np.testing.assert_allclose(whole[name].sum(axis=1), 1.0, atol=0.02)  # int8 steps of 1/256
        assert (whole[name] >= 0).all()


def test_int8_calibrates_on_a_seeded_sample_of_the_images_it_is_given():
    # Image i is filled with i % 256 and i // 256 in its first two pixels, so a sample names its rows.
    images = np.zeros((60_000, 28, 28), np.uint8)
    images[:, 0, 0], images[:, 0, 1] = np.arange(60_000) % 256, np.arange(60_000) // 256
    sample = lite.representative_images(images, count=500, seed=3)
    rows = sample[:, 0, 0].astype(int) + 256 * sample[:, 0, 1].astype(int)
    assert sample.shape == (500, 28, 28) and len(set(rows)) == 500 and (np.diff(rows) > 0).all()
    np.testing.assert_array_equal(sample, images[rows])
    np.testing.assert_array_equal(sample, lite.representative_images(images, count=500, seed=3))
    assert not np.array_equal(sample, lite.representative_images(images, count=500, seed=4))


def test_the_script_prints_one_row_per_model_and_nothing_on_stderr(converted):
    figures, _, done = converted["softmax"]
    stdout = done.stdout
    assert done.stderr == ""  # LiteRT's quantizer and interpreter lines held back
    saved = figures["saved_model"]
    assert f"SavedModel {saved['path']}: test accuracy {saved['test_accuracy']:.4f}" in stdout
    for name in lite.MODEL_FILES:
        f = figures[name]
        row = f"{name:<9}{f['bytes']:>11,}{f['test_accuracy']:>15.4f}{f['agreement']:>11.4f}"
        assert any(line.startswith(row) and line.endswith(f["path"]) for line in stdout.splitlines()), stdout
    assert f"class names: {figures['labels']}" in stdout


def test_evaluate_on_a_tflite_matches_its_own_predictions(converted, test_arrays, tmp_path):
    _, out_dir, _ = converted["mlp"]
    path = out_dir / lite.MODEL_FILES["int8"]
    images, labels = test_arrays
    predictions = np.argmax(interpreter_probabilities(path, images), axis=-1)
    matrix = np.zeros((10, 10), np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    precision, recall = np.diag(matrix) / matrix.sum(axis=0), np.diag(matrix) / matrix.sum(axis=1)
    done = run_script("evaluate.py", f"--model_dir={path}", f"--out_dir={tmp_path}", "--source=idx")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"model {path}: test accuracy {np.mean(predictions == labels):.4f} on 10000 images" in done.stdout
    assert done.stderr == ""
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["model_path"] == str(path) and report["examples"] == 10_000
    assert report["accuracy"] == np.mean(predictions == labels)
    np.testing.assert_array_equal(report["confusion_matrix"], matrix)
    np.testing.assert_allclose([row["recall"] for row in report["per_class"]], recall, rtol=1e-12)
    np.testing.assert_allclose([row["precision"] for row in report["per_class"]], precision, rtol=1e-12)
    assert (tmp_path / "confusion_matrix.png").is_file() and (tmp_path / "mistakes.png").is_file()


def test_what_cannot_be_converted_or_written_is_a_one_line_error(exports, tmp_path):
    no_export = tmp_path / "empty"
    no_export.mkdir()
    other = tf.Module()
    other.f = tf.function(lambda x: {"y": x * 2}, input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(other, str(tmp_path / "other" / "1"), signatures={"predict": other.f})
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    cases = [
        (no_export, tmp_path / "out", layout.ModelDirError, "neither a SavedModel"),
        (tmp_path / "other", tmp_path / "out", layout.ModelDirError,
         "no serving_default signature (found: predict)"),
        (exports["softmax"], a_file / "out", lite.OutDirError, f"out dir {a_file / 'out'} cannot be written"),
    ]  # fmt: skip
    for model_dir, out_dir, error, message in cases:
        with pytest.raises(error, match=re.escape(message)) as raised:
            lite.export_lite(model_dir, out_dir, source="idx")
        assert "\n" not in str(raised.value)
    assert not (tmp_path / "out").exists()

    done = run_script(
        "export_lite.py", f"--model_dir={exports['softmax']}", f"--out_dir={a_file / 'out'}", "--source=idx"
    )
    lines = error_lines(done)
    assert done.returncode == 1 and done.stdout == ""
    assert len(lines) == 1 and lines[0].startswith(f"error: out dir {a_file / 'out'} cannot be written"), done.stderr


def test_a_file_that_is_not_a_servable_tflite_is_a_one_line_error(tmp_path):
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"not a flatbuffer")
    doubling = tf.function(lambda x: x * 2, input_signature=[tf.TensorSpec([None], tf.float32)])
    unsigned = tmp_path / "unsigned.tflite"
    unsigned.write_bytes(tf.lite.TFLiteConverter.from_concrete_functions([doubling.get_concrete_function()]).convert())
    cases = [
        (tmp_path / "missing.tflite", "does not exist"),
        (garbage, "not a LiteRT model"),
        (unsigned, "expected a serving_default signature"),
    ]
    for path, message in cases:
        with pytest.raises(layout.ModelDirError, match=re.escape(message)) as raised:
            evaluation.evaluate_model(path, tmp_path / "out", source="idx")
        assert str(path) in str(raised.value) and "\n" not in str(raised.value)
    assert not (tmp_path / "out").exists()


def test_export_lite_calibrates_int8_on_the_seeded_training_sample(converted, exports, tmp_path):
    _, out_dir, _ = converted["softmax"]
    train_images, _ = data.load_arrays("train", source="idx")
    paths, _ = lite.write_models(exports["softmax"], tmp_path, lite.representative_images(train_images, seed=42))
    # Conversion is deterministic: the same bytes mean the same calibration images (--seed's default 42, training split).
    assert paths["int8"].read_bytes() == (out_dir / lite.MODEL_FILES["int8"]).read_bytes()
    assert paths["float32"].read_bytes() == (out_dir / lite.MODEL_FILES["float32"]).read_bytes()
