"""Two workers on 127.0.0.1 train one model with MultiWorkerMirroredStrategy, as TF_CONFIG describes; workers
that would train different data or resume from different epochs stop before training."""

import json
import os
import re
import socket
import subprocess

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO, error_lines, script_command
from fmnist_tf import data
from fmnist_tf.serving import layout

pytestmark = pytest.mark.slow  # every test runs the jobs in subprocesses


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _launch(worker_args):
    """Run train.py once per worker (its own args), as a TF_CONFIG cluster of CPU workers (one replica each, on any
    machine: MWMS would take every local GPU); return each (returncode, out, err)."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(len(worker_args))]}
    workers = [
        subprocess.Popen(
            script_command("train.py", *args),
            env=dict(os.environ, CUDA_VISIBLE_DEVICES="",
                     TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        )  # fmt: skip
        for i, args in enumerate(worker_args)
    ]
    outputs = [w.communicate(timeout=600) for w in workers]
    return [(w.returncode, out, err) for w, (out, err) in zip(workers, outputs)]


def test_two_workers_train_disjoint_shards_and_the_chief_alone_exports(tmp_path, one_epoch_run):
    base = tmp_path / "models" / "fashion_mnist"
    args = ["--epochs=1", "--source=idx", f"--export_dir={base}", f"--metrics_json={tmp_path / 'metrics.json'}",
            f"--workdir={tmp_path / 'work'}"]  # fmt: skip
    outputs = _launch([args, args])
    for returncode, _, err in outputs:
        assert returncode == 0, err[-3000:]

    # Exactly one version, from the chief (worker 0); only it wrote the figures.
    assert list(layout.version_paths(base)) == [1] and [p.name for p in base.iterdir()] == ["1"]
    figures = json.loads((tmp_path / "metrics.json").read_text())
    assert figures["strategy"] == "MultiWorkerMirroredStrategy" and figures["replicas"] == 2
    assert "exported" in outputs[0][1] and "exported" not in outputs[1][1]

    # Each worker's replica trained on its own half of every global batch.
    shard_line = r"input pipeline (\d) of 2: this worker trained on (\d+) examples"
    shards = [re.search(shard_line, out) for _, out, _ in outputs]
    assert sorted(int(m.group(1)) for m in shards) == [0, 1]
    assert [int(m.group(2)) for m in shards] == [24_000, 24_000]

    # The exported model, scored here on the real test set through its serving signature.
    images, labels = data.load_arrays("test", "idx")
    serve = tf.saved_model.load(str(base / "1")).signatures["serving_default"]
    classes = [serve(images=tf.constant(images[i : i + 1_000]))["class_id"].numpy() for i in range(0, 10_000, 1_000)]
    accuracy = float(np.mean(np.concatenate(classes) == labels))
    assert accuracy >= 0.80

    # Same global batches as one machine: the same figures, to float rounding of the all-reduce.
    one = one_epoch_run[1]  # conftest's: the same flags on one machine
    assert abs(one["val_loss"] - figures["val_loss"]) < 1e-4
    assert abs(one["val_accuracy"] - figures["val_accuracy"]) <= 0.005
    assert abs(one["test_accuracy"] - figures["test_accuracy"]) <= 2e-4
    assert abs(accuracy - figures["test_accuracy"]) < 1e-9

    # Restarted for a second epoch with per-host workdirs (only the chief's holds the checkpoint) and,
    # on worker 1, another seed (another split): both workers stop before training, saying why.
    base_args = ["--epochs=2", "--source=idx", f"--export_dir={base}"]
    outputs = _launch([[*base_args, f"--workdir={tmp_path / 'work'}"],
                       [*base_args, f"--workdir={tmp_path / 'work1'}", "--seed=7"]])  # fmt: skip
    for returncode, out, _ in outputs:
        assert returncode == 1 and "Epoch " not in out
    lines = [error_lines(subprocess.CompletedProcess([], rc, out, err)) for rc, out, err in outputs]
    for (line,) in lines:
        assert line.startswith("error: workers disagree before training: the training data's fingerprint differs")
        assert "the epoch to resume after differs (worker 0: 1, worker 1: 0)" in line
        assert "one --workdir that all of them reach" in line
        assert "the training settings' fingerprint differs" in line  # --seed
    assert list(layout.version_paths(base)) == [1]
