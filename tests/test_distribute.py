"""Strategy choice from the environment (simulated TPU VMs, TPU nodes, clusters, GPUs), the strategy this machine's
devices call for, and every CPU strategy (which any machine can build) training the same figures, dropout included."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from fmnist_tf.training import distribute

GOOGLE, NVIDIA = "0x1ae0", "0x10de"


def _fake_machine(tmp_path, dev=(), pci=()):
    """A /dev folder holding ``dev`` files and a /sys/bus/pci/devices folder with ``pci`` (vendor, device)."""
    dev_dir, pci_dir = tmp_path / "dev", tmp_path / "pci"
    (dev_dir / "vfio").mkdir(parents=True)
    pci_dir.mkdir()
    for name in dev:
        (dev_dir / name).touch()
    for i, (vendor, device) in enumerate(pci):
        (pci_dir / f"0000:00:0{i}.0").mkdir()
        (pci_dir / f"0000:00:0{i}.0" / "vendor").write_text(vendor + "\n")
        (pci_dir / f"0000:00:0{i}.0" / "device").write_text(device + "\n")
    return str(dev_dir), str(pci_dir)


TWO_WORKERS = json.dumps({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}})
ONE_WORKER = json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}})


@pytest.mark.parametrize(
    "case, dev, pci, environ, gpus, kind, tpu",
    [
        ("TPU v4 VM", ["accel0", "accel1"], [], {}, 0, "tpu", "local"),
        ("TPU v5e VM", ["vfio/vfio", "vfio/0", "vfio/1"], [(GOOGLE, "0x0063")], {}, 0, "tpu", "local"),
        ("TPU v6e VM", ["vfio/vfio", "vfio/3"], [(NVIDIA, "0x2330"), (GOOGLE, "0x006f")], {}, 0, "tpu", "local"),
        ("VFIO host, no TPU", ["vfio/vfio", "vfio/0"], [(NVIDIA, "0x2330")], {}, 0, "default", None),
        ("Google PCI device that is no TPU", ["vfio/0"], [(GOOGLE, "0x1234")], {}, 0, "default", None),
        ("TPU node by name", [], [], {"TPU_NAME": "my-tpu"}, 0, "tpu", "my-tpu"),
        ("TPU_NAME=local", [], [], {"TPU_NAME": "local"}, 0, "tpu", "local"),
        ("TPU_NAME wins over local chips", ["accel0"], [], {"TPU_NAME": "grpc://10.0.0.2:8470"}, 0, "tpu",
         "grpc://10.0.0.2:8470"),
        ("cluster of two", ["accel0"], [], {"TF_CONFIG": TWO_WORKERS}, 0, "multi_worker", None),
        ("cluster of one", [], [], {"TF_CONFIG": ONE_WORKER}, 0, "default", None),
        ("two GPUs", [], [], {}, 2, "gpus", None),
        ("one GPU", [], [], {}, 1, "gpu", None),
        ("CPU", [], [], {}, 0, "default", None),
    ],
)  # fmt: skip
def test_strategy_plan_follows_the_environment(tmp_path, case, dev, pci, environ, gpus, kind, tpu):
    dev_dir, pci_dir = _fake_machine(tmp_path, dev, pci)
    choice = distribute.plan_strategy(environ, dev_dir, pci_dir, gpus)
    assert (choice.kind, choice.tpu) == (kind, tpu), case
    assert choice.reason


def test_this_machine_plans_and_builds_the_strategy_its_devices_call_for():
    if os.environ.get("TF_CONFIG") or os.environ.get("TPU_NAME") or distribute.local_tpu_chips():
        pytest.skip("a cluster or TPU machine: planned from the environment (the cases above)")
    gpus = len(tf.config.list_logical_devices("GPU"))
    choice = distribute.plan_strategy()
    assert choice.kind == ("gpus" if gpus > 1 else "gpu" if gpus else "default")
    strategy = distribute.build_strategy(choice)
    expected = {"gpus": tf.distribute.MirroredStrategy, "gpu": tf.distribute.OneDeviceStrategy}.get(choice.kind)
    assert isinstance(strategy, expected) if expected else strategy is tf.distribute.get_strategy()
    assert strategy.num_replicas_in_sync == max(1, gpus)


EVERY_STRATEGY = """
import json
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from fmnist_tf import data, training
from fmnist_tf.model import ReplicaDropout

# The dropout mask of two replicas against one machine's, from the same seed state.
mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with mirrored.scope():
    replicated = ReplicaDropout(0.5, seed=3)
single = ReplicaDropout(0.5, seed=3)
x = tf.random.stateless_uniform([8, 100], seed=[1, 2]) + 0.5
halves = mirrored.experimental_distribute_values_from_function(
    lambda context: x[4 * context.replica_id_in_sync_group : 4 * context.replica_id_in_sync_group + 4])


def drop(v):
    return replicated(v, training=True)


@tf.function
def step(v):
    return mirrored.run(drop, args=(v,))


masks = []
for _ in range(2):
    parts = [t.numpy() for t in mirrored.experimental_local_results(step(halves))]
    masks.append({"replicas": [p.tolist() for p in parts], "single": single(x, training=True).numpy().tolist()})

# Small splits of real images: the 10,000 test examples are the quickest to read.
images, labels = data.load_arrays("test", "idx")
bounds = {"train": (0, 3200), "validation": (3200, 4200), "test": (4200, 5200)}
small = {k: tf.data.Dataset.from_tensor_slices((images[a:b], labels[a:b])) for k, (a, b) in bounds.items()}
strategies = {
    "default": tf.distribute.get_strategy,
    "one_device": lambda: tf.distribute.OneDeviceStrategy("/cpu:0"),
    "mirrored_1": lambda: tf.distribute.MirroredStrategy(["/cpu:0"]),
    "mirrored_2": lambda: mirrored,
    "multi_worker": tf.distribute.MultiWorkerMirroredStrategy,
}
runs = {}
for name, make in strategies.items():
    config = training.Config(model="mlp", epochs=1, batch_size=64, source="idx", export_dir="", verbose=False)
    figures = training.run(config, datasets=small, strategy=make())
    runs[name] = {k: figures[k] for k in ("history", "test_loss", "replicas", "strategy", "shard")}
print(json.dumps({"masks": masks, "runs": runs}))
"""


@pytest.fixture(scope="module")
def every_strategy(tmp_path_factory):
    """mlp (Dropout) trained 1 epoch on 3,200 examples under each strategy; dropout masks of 2 replicas."""
    # CPUs only, on any machine: the default strategy and MWMS would otherwise take the GPUs the others are not on.
    done = subprocess.run([sys.executable, "-c", EVERY_STRATEGY], capture_output=True, text=True,
                          cwd=tmp_path_factory.mktemp("every"), env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_strategy_builds_and_trains_the_same_figures(every_strategy):
    runs = every_strategy["runs"]
    assert {name: (r["strategy"], r["replicas"]) for name, r in runs.items()} == {
        "default": ("default strategy", 1),
        "one_device": ("OneDeviceStrategy", 1),
        "mirrored_1": ("MirroredStrategy", 1),
        "mirrored_2": ("MirroredStrategy", 2),
        "multi_worker": ("MultiWorkerMirroredStrategy", 1),
    }
    reference = runs["default"]
    assert reference["history"]["val_accuracy"][0] > 0.6  # 50 steps of real data
    for name, r in runs.items():
        # One replica: the same steps on the same batches; each strategy compiles its own graph, so equal to
        # float rounding (the last bit can differ between CPUs). Two: the same dropout masks, gradients summed
        # from halves.
        tolerance = 1e-6 if r["replicas"] == 1 else 1e-5
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            np.testing.assert_allclose(r["history"][key], reference["history"][key], rtol=tolerance, err_msg=name)
        assert r["test_loss"] == pytest.approx(reference["test_loss"], rel=tolerance), name
        assert abs(r["history"]["val_accuracy"][-1] - reference["history"]["val_accuracy"][-1]) <= 0.005, name
    assert runs["mirrored_2"]["shard"]["examples"] == 3200  # its two replicas: a half of each batch each


def test_replicas_drop_what_one_machine_drops(every_strategy):
    for step in every_strategy["masks"]:
        first, second = (np.array(part) for part in step["replicas"])
        single = np.array(step["single"])
        np.testing.assert_array_equal(np.concatenate([first, second]), single)
        assert not np.array_equal(first == 0, second == 0)  # each replica its own rows of the mask
        assert 0.3 < np.mean(single == 0) < 0.7
    assert step["single"] != every_strategy["masks"][0]["single"]  # a new mask each step
