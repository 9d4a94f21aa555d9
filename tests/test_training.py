import dataclasses
import json
import os
import re
import uuid

import numpy as np
import pytest
import tensorflow as tf

from conftest import planned_strategy
from fmnist_tf import data, evaluation, training
from fmnist_tf.serving import layout


def _config(tmp_path, **overrides):
    return dataclasses.replace(
        training.Config(epochs=1, source="idx", export_dir=str(tmp_path / "fashion_mnist"), verbose=False), **overrides
    )


def _weights(version_dir):
    # In variable order; names carry Keras's per-process uniquifying suffixes.
    return [v.numpy() for v in tf.saved_model.load(str(version_dir)).variables]


@pytest.fixture
def first_run(one_epoch_run):
    """One epoch of the main job on the real data, exported: (its folder, its figures); conftest's, shared."""
    return one_epoch_run


def test_one_epoch_on_real_data_trains_evaluates_and_exports(first_run):
    tmp_path, figures = first_run
    assert figures["val_accuracy"] >= 0.80 and figures["test_accuracy"] >= 0.79
    assert 0 < figures["val_loss"] < 0.7 and 0 < figures["test_loss"] < 0.7
    assert set(figures["history"]) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len(figures["history"]["loss"]) == 1
    assert figures["export_path"] == str(tmp_path / "fashion_mnist" / "1")
    assert 0 < figures["fit_seconds"] < figures["seconds"]
    strategy, replicas = planned_strategy()
    assert figures["strategy"] == strategy and figures["replicas"] == (replicas or figures["replicas"])
    config = (tmp_path / "models.config").read_text()
    assert f'base_path: "{tmp_path / "fashion_mnist"}"' in config


def test_same_seed_gives_bit_identical_metrics_and_weights(first_run, tmp_path):
    first = first_run[1]
    second = training.run(_config(tmp_path / "b"))
    for key in ("val_accuracy", "val_loss", "test_accuracy", "test_loss", "history"):
        assert first[key] == second[key], key
    weights_a, weights_b = _weights(first["export_path"]), _weights(second["export_path"])
    assert [w.shape for w in weights_a] == [(784, 10), (10,)] or [w.shape for w in weights_a] == [(10,), (784, 10)]
    for a, b in zip(weights_a, weights_b):
        np.testing.assert_array_equal(a, b)
    other = training.run(_config(tmp_path / "c", seed=7))
    assert other["history"] != first["history"]


def test_datasets_and_strategy_can_be_injected(tmp_path):
    splits = data.load_splits(seed=0, source="idx")
    small = {name: examples.blocks.unbatch().take(3200) for name, examples in splits.items()}
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    figures = training.run(_config(tmp_path, export_dir=""), datasets=small, strategy=strategy)
    assert figures["strategy"] == "OneDeviceStrategy" and figures["export_path"] is None
    assert figures["val_accuracy"] > 0.6  # 100 steps of real data already beat chance (0.1) by far


def test_given_datasets_stream_through_the_pipeline_with_a_small_buffer(tmp_path):
    """Blocks saved with Dataset.save, as a caller's own data on disk would be: trained with a 1,000-example
    buffer, the same bits twice, and another buffer gives other steps."""
    test = data.load_examples("test", "idx")
    test.blocks.save(str(tmp_path / "blocks"))
    given = {name: tf.data.Dataset.load(str(tmp_path / "blocks")) for name in ("train", "validation", "test")}
    runs = [training.run(_config(tmp_path, export_dir="", shuffle_buffer=buffer), datasets=given)
            for buffer in (1_000, 1_000, None)]  # fmt: skip
    assert runs[0]["history"] == runs[1]["history"] and runs[0]["history"] != runs[2]["history"]
    assert runs[0]["val_accuracy"] > 0.75  # 313 steps over the 10,000 test images, scored on them


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("epochs", 0, "epochs must be a positive integer"),
        ("batch_size", -1, "batch_size must be a positive integer"),
        ("epochs", "abc", "epochs must be a positive integer"),
        ("source", "csv", "source must be one of tfds, idx"),
        ("learning_rate", 0.0, "learning_rate must be positive"),
        ("threads", -1, "threads must be 0"),
        ("shuffle_buffer", 0, "shuffle_buffer must be a positive integer"),
        ("raw_dir", "/nonexistent", "raw_dir /nonexistent does not exist"),
    ],
)
def test_bad_config_is_rejected_before_any_work(tmp_path, field, value, message):
    config = _config(tmp_path, **{field: value})
    with pytest.raises(ValueError, match=message):
        training.run(config)
    assert layout.version_paths(tmp_path / "fashion_mnist") == {}


@pytest.mark.parametrize(
    "text, message",
    [
        ('model_config_list { config { name: "a"\n', "is not a TF Serving model config"),  # unbalanced
        ('custom_model_config { type_url: "x" }\n', "holds a custom_model_config"),
    ],
)
def test_a_models_config_the_export_could_not_update_stops_the_run_before_any_work(tmp_path, text, message):
    config = _config(tmp_path, workdir=str(tmp_path / "work"))
    path = tmp_path / layout.MODEL_CONFIG_FILE
    path.write_text(text)
    with pytest.raises(layout.ModelConfigError, match=f"{re.escape(str(path))}.*{message}"):
        training.run(config)
    assert path.read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fashion_mnist", layout.MODEL_CONFIG_FILE]
    assert layout.version_paths(tmp_path / "fashion_mnist") == {}


def _scalars(event_dir):
    scalars = {}
    for event_file in tf.io.gfile.glob(os.path.join(event_dir, "events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(event_file):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append(float(tf.make_ndarray(value.tensor)))
    return scalars


def test_a_run_export_and_evaluation_all_on_urls():
    """ram:// is TF's in-process file system: the tf.io.gfile calls that gs:// and s3:// take, run here."""
    from fmnist_tf.cli import common

    root = f"ram://fmnist-{uuid.uuid4().hex}"
    work, base = f"{root}/work", f"{root}/models/fashion_mnist"
    config = training.Config(epochs=2, source="idx", workdir=work, export_dir=base, verbose=False)
    figures = training.run(config)
    assert figures["export_path"] == f"{base}/1" and not os.path.exists("ram:")  # no local "ram:" folder
    common.write_json(f"{root}/metrics.json", figures)
    assert json.loads(tf.io.gfile.GFile(f"{root}/metrics.json").read())["history"] == figures["history"]

    # The workdir: settings, checkpoints, TensorBoard, learning curves.
    assert json.loads(tf.io.gfile.GFile(f"{work}/run.json").read())["settings"]["batch_size"] == 32
    assert tf.train.latest_checkpoint(f"{work}/checkpoints").endswith("ckpt-2")
    assert _scalars(f"{work}/tensorboard")["val_accuracy"] == pytest.approx(figures["history"]["val_accuracy"])
    curves = tf.io.decode_png(tf.io.gfile.GFile(f"{work}/{training.LEARNING_CURVES_FILE}", "rb").read())
    assert curves.shape[0] > 200 and float(tf.math.reduce_std(tf.cast(curves[..., :3], tf.float32))) > 10

    # The export: one complete version, nothing left beside it, and TF Serving's config.
    assert tf.io.gfile.listdir(base) == ["1"]
    assert tf.saved_model.contains_saved_model(f"{base}/1")
    assert f'base_path: "{base}"' in tf.io.gfile.GFile(f"{root}/models/models.config").read()

    # Evaluated where it lies, the report written beside it.
    report = evaluation.evaluate_saved_model(base, f"{root}/eval", source="idx")
    assert report["model_path"] == f"{base}/1" and abs(report["accuracy"] - figures["test_accuracy"]) <= 2e-4
    assert sorted(tf.io.gfile.listdir(f"{root}/eval")) == sorted(
        [evaluation.REPORT_FILE, evaluation.CONFUSION_MATRIX_FILE, evaluation.MISTAKES_FILE]
    )

    # Started again, finished: nothing trained, the same version.
    again = training.run(config)
    assert again["exported_before"] and again["export_path"] == f"{base}/1" and tf.io.gfile.listdir(base) == ["1"]
    assert again["history"] == figures["history"]
