"""The workdir: the recorded settings, a second run refused flag by flag, the lock, the exports remembered."""

import dataclasses
import json
import os
import signal
import socket
import subprocess
import time

import pytest

from conftest import built_model_and_optimizer
from fmnist_tf import training
from fmnist_tf.training.checkpoints import Checkpoints, empty_history
from fmnist_tf.training.workdir import LOCK_FILE, RUN_FILE, SETTINGS, STALE_LOCK_SECONDS, Workdir, WorkdirError

MLP_SETTINGS = {"model": "mlp", "optimizer": "adam", "learning_rate": None, "batch_size": 128, "seed": 42,
                "source": "tfds", "shuffle_buffer": None, "augment": False, "learning_rate_decay": 1.0}  # fmt: skip


def _save_epochs(workdir, epochs):
    model, optimizer = built_model_and_optimizer()
    Checkpoints(str(workdir), model, optimizer, chief=True).save(epochs, empty_history())


def test_settings_are_recorded_and_other_settings_refused_flag_by_flag(tmp_path):
    workdir = Workdir(tmp_path / "w")
    assert workdir.check(MLP_SETTINGS, epochs=5) == 0
    workdir.record(MLP_SETTINGS)
    assert workdir.check(MLP_SETTINGS, epochs=5) == 0
    other = {**MLP_SETTINGS, "batch_size": 64, "learning_rate": 0.01, "seed": 7}
    with pytest.raises(WorkdirError) as error:
        workdir.check(other, epochs=5)
    message = str(error.value)
    assert "\n" not in message and str(tmp_path / "w") in message
    for part in ("--learning_rate=0.01 (workdir: default)", "--batch_size=64 (workdir: 128)", "--seed=7 (workdir: 42)"):
        assert part in message
    assert "--model" not in message and "--optimizer" not in message


def test_more_epochs_continue_a_run_and_fewer_are_refused(tmp_path):
    workdir = Workdir(tmp_path)
    workdir.record(MLP_SETTINGS)
    _save_epochs(tmp_path, 3)
    assert workdir.check(MLP_SETTINGS, epochs=5) == 3
    assert workdir.check(MLP_SETTINGS, epochs=3) == 3  # finished: nothing left to train
    with pytest.raises(WorkdirError, match="already holds 3 epochs, more than --epochs=2"):
        workdir.check(MLP_SETTINGS, epochs=2)


def test_checkpoints_without_recorded_settings_are_refused(tmp_path):
    _save_epochs(tmp_path, 1)
    with pytest.raises(WorkdirError, match="holds checkpoints but no run.json"):
        Workdir(tmp_path).check(MLP_SETTINGS, epochs=5)


def test_a_run_with_other_settings_stops_before_reading_data(tmp_path):
    workdir = Workdir(tmp_path / "w")
    workdir.record({**MLP_SETTINGS, "model": "softmax", "optimizer": "rmsprop", "batch_size": 32, "source": "idx"})
    config = training.Config(epochs=1, model="mlp", source="idx", raw_dir=str(tmp_path), workdir=str(tmp_path / "w"),
                             export_dir="", verbose=False)  # fmt: skip
    # raw_dir holds no data files: reading them would fail with a DataError instead.
    with pytest.raises(WorkdirError, match=r"--model=mlp \(workdir: softmax\), --optimizer=adam \(workdir: rmsprop\)"):
        training.run(config)
    assert not (tmp_path / "w" / LOCK_FILE).exists()  # released on the way out


def _write_lock(workdir, pid, host=None, refreshed=None):
    os.makedirs(workdir, exist_ok=True)
    lock = {"pid": pid, "host": host or socket.gethostname(), "refreshed": refreshed or time.time()}
    (workdir / LOCK_FILE).write_text(json.dumps(lock))


def test_a_workdir_in_use_is_refused_and_a_dead_holders_lock_is_taken(tmp_path):
    holder = subprocess.Popen(["sleep", "60"])
    try:
        _write_lock(tmp_path, holder.pid)
        with pytest.raises(WorkdirError, match=f"in use by pid {holder.pid} on {socket.gethostname()}"):
            with Workdir(tmp_path).lock():
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with Workdir(tmp_path).lock():  # its holder is gone
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_FILE).exists()


def test_another_hosts_lock_blocks_until_it_stops_being_refreshed(tmp_path):
    _write_lock(tmp_path, 1, host="other-host")
    with pytest.raises(WorkdirError, match="in use by pid 1 on other-host"):
        with Workdir(tmp_path).lock():
            pass
    _write_lock(tmp_path, 1, host="other-host", refreshed=time.time() - STALE_LOCK_SECONDS - 60)
    with Workdir(tmp_path).lock() as workdir:
        workdir.refresh_lock()
        assert json.loads((tmp_path / LOCK_FILE).read_text())["host"] == socket.gethostname()


def test_exports_are_remembered_while_their_version_exists(tmp_path):
    workdir = Workdir(tmp_path / "w")
    workdir.record(MLP_SETTINGS)
    version = tmp_path / "models" / "fashion_mnist_mlp" / "3"
    version.mkdir(parents=True)
    workdir.record_export(str(tmp_path / "models" / "fashion_mnist_mlp"), str(version))
    assert workdir.previous_export(str(tmp_path / "models" / "fashion_mnist_mlp")) == str(version)
    assert workdir.previous_export(str(tmp_path / "models" / "elsewhere")) is None
    version.rmdir()
    assert workdir.previous_export(str(tmp_path / "models" / "fashion_mnist_mlp")) is None


def test_the_workdir_record_is_plain_json(tmp_path):
    workdir = Workdir(tmp_path)
    config = dataclasses.asdict(training.Config(model="cnn"))
    workdir.record(config)
    record = json.loads((tmp_path / RUN_FILE).read_text())
    assert record == {"settings": {k: config[k] for k in SETTINGS}, "exports": {}}
    assert record["settings"]["optimizer"] == "adam" and record["settings"]["batch_size"] == 64
