"""Two workers on 127.0.0.1 train one model with MultiWorkerMirroredStrategy, as TF_CONFIG describes."""

import json
import os
import re
import socket
import subprocess

import numpy as np
import tensorflow as tf

from conftest import REPO, run_script, script_command
from fmnist_tf import data, export


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_train_disjoint_shards_and_the_chief_alone_exports(tmp_path):
    base = tmp_path / "models" / "fashion_mnist"
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    args = ["--epochs=1", "--source=idx", f"--export_dir={base}", f"--metrics_json={tmp_path / 'metrics.json'}"]
    workers = [
        subprocess.Popen(
            script_command("train.py", *args, f"--workdir={tmp_path / 'work'}"),
            env=dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        )  # fmt: skip
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=600) for w in workers]
    for w, (out, err) in zip(workers, outputs):
        assert w.returncode == 0, err[-3000:]

    # Exactly one version, from the chief (worker 0); only it wrote the figures.
    assert export.versions(base) == [1] and [p.name for p in base.iterdir()] == ["1"]
    figures = json.loads((tmp_path / "metrics.json").read_text())
    assert figures["strategy"] == "CollectiveAllReduceStrategy" and figures["replicas"] == 2
    assert "exported" in outputs[0][0] and "exported" not in outputs[1][0]

    # Each worker's replica trained on its own half of every global batch.
    shards = [re.search(r"input pipeline (\d) of 2: this worker trained on (\d+) examples", out) for out, _ in outputs]
    assert sorted(int(m.group(1)) for m in shards) == [0, 1]
    assert [int(m.group(2)) for m in shards] == [24_000, 24_000]

    # The exported model, scored here on the real test set through its serving signature.
    images, labels = data.load_arrays("test", "idx")
    serve = tf.saved_model.load(str(base / "1")).signatures["serving_default"]
    accuracy = float(np.mean(serve(images=tf.constant(images))["class_id"].numpy() == labels))
    assert accuracy >= 0.80

    # Same global batches as one machine: the same figures, to float rounding of the all-reduce.
    single = run_script("train.py", "--epochs=1", "--source=idx", "--export_dir=", f"--metrics_json={tmp_path / 'one.json'}")
    assert single.returncode == 0, single.stderr[-3000:]
    one = json.loads((tmp_path / "one.json").read_text())
    assert abs(one["val_loss"] - figures["val_loss"]) < 1e-4
    assert abs(one["test_accuracy"] - figures["test_accuracy"]) <= 2e-4
    assert abs(accuracy - figures["test_accuracy"]) < 1e-9
