import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from fmnist_tf import data, distribute, export, training


def _config(tmp_path, **overrides):
    return dataclasses.replace(
        training.Config(epochs=1, source="idx", export_dir=str(tmp_path / "fashion_mnist"), verbose=False), **overrides
    )


def _weights(version_dir):
    # In variable order; names carry Keras's per-process uniquifying suffixes.
    return [v.numpy() for v in tf.saved_model.load(str(version_dir)).variables]


def test_one_epoch_on_real_data_trains_evaluates_and_exports(tmp_path):
    figures = training.run(_config(tmp_path))
    assert figures["val_accuracy"] >= 0.80 and figures["test_accuracy"] >= 0.79
    assert 0 < figures["val_loss"] < 0.7 and 0 < figures["test_loss"] < 0.7
    assert set(figures["history"]) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len(figures["history"]["loss"]) == 1
    assert figures["export_path"] == str(tmp_path / "fashion_mnist" / "1")
    assert 0 < figures["fit_seconds"] < figures["seconds"]
    assert figures["strategy"] == "_DefaultDistributionStrategy" and figures["replicas"] == 1
    config = (tmp_path / "models.config").read_text()
    assert f'base_path: "{tmp_path / "fashion_mnist"}"' in config


def test_same_seed_gives_bit_identical_metrics_and_weights(tmp_path):
    first = training.run(_config(tmp_path / "a"))
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
    small = {name: ds.take(3200) for name, ds in splits.items()}
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    figures = training.run(_config(tmp_path, export_dir=""), datasets=small, strategy=strategy)
    assert figures["strategy"] == "OneDeviceStrategy" and figures["export_path"] is None
    assert figures["val_accuracy"] > 0.6  # 100 steps of real data already beat chance (0.1) by far


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("epochs", 0, "epochs must be a positive integer"),
        ("batch_size", -1, "batch_size must be a positive integer"),
        ("epochs", "abc", "epochs must be a positive integer"),
        ("source", "csv", "source must be one of tfds, idx"),
        ("learning_rate", 0.0, "learning_rate must be positive"),
        ("threads", -1, "threads must be 0"),
        ("raw_dir", "/nonexistent", "raw_dir /nonexistent does not exist"),
    ],
)
def test_bad_config_is_rejected_before_any_work(tmp_path, field, value, message):
    config = _config(tmp_path, **{field: value})
    with pytest.raises(ValueError, match=message):
        training.run(config)
    assert export.versions(tmp_path / "fashion_mnist") == []


def test_cpu_machine_gets_the_default_strategy():
    assert not tf.config.list_physical_devices("GPU")
    assert distribute.choose_strategy() is tf.distribute.get_strategy()


MIRRORED_TWO_CPUS = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from fmnist_tf import training
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
config = training.Config(epochs=2, source="idx", export_dir="", verbose=False)
figures = training.run(config, strategy=strategy)
print(json.dumps({k: figures[k] for k in ("history", "replicas", "shard", "val_loss")}))
"""


def test_two_replicas_train_the_same_steps_as_one(tmp_path):
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", MIRRORED_TWO_CPUS], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    mirrored = json.loads(done.stdout.strip().splitlines()[-1])
    assert mirrored["replicas"] == 2 and mirrored["shard"]["examples"] == 2 * 48_000
    single = training.run(_config(tmp_path, epochs=2, export_dir=""))
    # The distributed feeder with two half-batches against the in-graph loop with whole batches.
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(mirrored["history"][key], single["history"][key], atol=2e-4)
    assert abs(mirrored["val_loss"] - single["val_loss"]) < 1e-4


def test_workdir_gets_checkpoints_tensorboard_and_learning_curves(tmp_path):
    import matplotlib.image

    workdir = tmp_path / "work"
    figures = training.run(_config(tmp_path, epochs=2, export_dir="", workdir=str(workdir)))
    curves = matplotlib.image.imread(workdir / training.LEARNING_CURVES_FILE)
    assert curves.shape[0] > 200 and curves[..., :3].std() > 0.05
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert tf.train.latest_checkpoint(str(workdir / "checkpoints")) is not None
    scalars = {}
    for event_file in (workdir / "tensorboard").glob("events.out.tfevents.*"):
        for record in tf.data.TFRecordDataset(str(event_file)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append(float(tf.make_ndarray(value.tensor)))
    assert scalars["val_accuracy"] == pytest.approx(figures["history"]["val_accuracy"])
