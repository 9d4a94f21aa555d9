"""Faults a user meets: a killed run, a killed or racing export, damaged data files, a half-made TFDS cache.

Each test runs the real code, most of them as real processes that are really killed.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO, error_lines, run_script, script_command, wait_for, write_idx
from fmnist_tf import data, training
from fmnist_tf.serving import export, layout


def _variables(version_dir):
    return [v.numpy() for v in tf.saved_model.load(str(version_dir)).variables]


def _checkpoint_values(workdir):
    latest = tf.train.latest_checkpoint(str(workdir / "checkpoints"))
    return {name: tf.train.load_variable(latest, name) for name, _ in tf.train.list_variables(latest)}


@pytest.mark.slow
def test_training_killed_mid_epoch_resumes_to_the_same_weights_and_metrics(tmp_path):
    # mlp: its Dropout draws from a seed generator whose state must resume with the weights. Batch 32:
    # 1,500 steps an epoch, long enough for the kill to land inside the second epoch.
    common = ["--model=mlp", "--epochs=2", "--batch_size=32", "--source=idx"]
    workdir = tmp_path / "work"
    args = [*common, f"--workdir={workdir}", f"--export_dir={tmp_path / 'a'}", f"--metrics_json={tmp_path / 'a.json'}"]
    history = workdir / "checkpoints" / "history.json"
    proc = subprocess.Popen(script_command("train.py", *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    wait_for(lambda: history.exists() and len(json.loads(history.read_text())["loss"]) >= 1, proc)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert layout.version_paths(tmp_path / "a") == {}
    assert (workdir / "lock.json").exists()  # the killed run's lock, which must not block the restart

    resumed = run_script("train.py", *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stdout and resumed.stdout.split("after epoch ")[1].split()[0] == "1"
    assert resumed.stdout.count("Epoch ") == 1

    straight_args = [f"--workdir={tmp_path / 'straight'}", "--export_dir=", f"--metrics_json={tmp_path / 'b.json'}"]
    straight = run_script("train.py", *common, *straight_args)
    assert straight.returncode == 0, straight.stderr[-3000:]
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    for key in ("val_accuracy", "val_loss", "test_accuracy", "test_loss", "history"):
        assert a[key] == b[key], key
    # Every variable: weights, the Dropout's seed-generator state, the optimizer's moments and step.
    resumed_values, straight_values = _checkpoint_values(workdir), _checkpoint_values(tmp_path / "straight")
    assert resumed_values.keys() == straight_values.keys() and len(resumed_values) > 10
    for name, value in resumed_values.items():
        np.testing.assert_array_equal(value, straight_values[name], err_msg=name)

    # Started again when finished: nothing trained, nothing exported, and no TF checkpoint warnings even
    # with TF's logs shown.
    again = run_script("train.py", *args, "--verbosity=0")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"nothing new to export: this run exported {tmp_path / 'a' / '1'} before" in again.stdout
    assert "Epoch " not in again.stdout and list(layout.version_paths(tmp_path / "a")) == [1]
    assert "could not be found" not in again.stderr and "save_counter" not in again.stderr

    other = run_script("train.py", *[a for a in args if a != "--batch_size=32"], "--batch_size=64")
    assert other.returncode == 1
    (line,) = error_lines(other)
    assert line.startswith(f"error: workdir {workdir} was trained with other settings: --batch_size=64 (workdir: 32)")


EXPORT_AND_DIE = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    from fmnist_tf import model
    from fmnist_tf.serving import export
    export._write_warmup = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
    export.export_saved_model(model.build_model(), sys.argv[1], warmup_images=np.zeros((1, 28, 28), np.uint8))
    """
)

EXPORT_THREE = textwrap.dedent(
    """
    import sys
    from fmnist_tf import model
    from fmnist_tf.serving import export
    m = model.build_model()
    print(" ".join(str(export.export_saved_model(m, sys.argv[1])) for _ in range(3)))
    """
)


def _digest(path):
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_export_killed_midway_leaves_no_version_and_the_next_export_cleans_up(tmp_path):
    from fmnist_tf.model import build_model

    base = tmp_path / "fashion_mnist"
    first = export.export_saved_model(build_model(), base)
    before = _digest(first)
    died = subprocess.run([sys.executable, "-c", EXPORT_AND_DIE, str(base)], capture_output=True, cwd=tmp_path)
    assert died.returncode == -signal.SIGKILL
    leftovers = [p.name for p in base.iterdir() if p.name != "1"]
    assert len(leftovers) == 1 and leftovers[0].startswith(export.TMP_PREFIX)  # a SavedModel half written
    assert layout.version_paths(base) == {1: first}
    assert _digest(first) == before
    second = export.export_saved_model(build_model(), base)
    assert second == base / "2" and sorted(p.name for p in base.iterdir()) == ["1", "2"]


def test_temporary_exports_are_reaped_only_when_their_writer_is_gone(tmp_path):
    # On shared storage another host's pid means nothing here: its leftovers go only once they are a day old.
    dead = subprocess.Popen(["true"])
    dead.wait()
    host, now = export._host(), int(time.time())
    old = now - export.STALE_TMP_SECONDS - 60
    names = {
        f"{export.TMP_PREFIX}{host}.{dead.pid}.{now}.aa": False,  # this host, writer dead
        f"{export.TMP_PREFIX}{host}.{os.getpid()}.{now}.bb": True,  # this host, writer alive
        f"{export.TMP_PREFIX}other-host.{dead.pid}.{now}.cc": True,  # another host's, recent
        f"{export.TMP_PREFIX}other-host.{os.getpid()}.{old}.dd": False,  # another host's, a day old
        f"{export.TMP_PREFIX}not-ours": True,
        "1": True,
    }
    for name in names:
        (tmp_path / name).mkdir()
    export.remove_stale_tmp(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(name for name, kept in names.items() if kept)


@pytest.mark.slow
def test_concurrent_exports_get_distinct_complete_versions(tmp_path):
    base = tmp_path / "fashion_mnist"
    procs = [
        subprocess.Popen([sys.executable, "-c", EXPORT_THREE, str(base)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    paths = [p for proc in procs for p in proc.communicate(timeout=300)[0].split()]
    assert all(proc.returncode == 0 for proc in procs)
    assert sorted(paths) == sorted(str(base / str(v)) for v in range(1, 7))
    assert list(layout.version_paths(base)) == [1, 2, 3, 4, 5, 6]
    for version in layout.version_paths(base):
        assert (base / str(version) / "saved_model.pb").is_file()
        assert (base / str(version) / "variables" / "variables.index").is_file()


def _truncate(raw):
    path = raw / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100_000])
    return path.name, "truncated or corrupt"


def _corrupt(raw):
    path = raw / "t10k-images-idx3-ubyte.gz"
    blob = bytearray(path.read_bytes())
    blob[2_000_000:2_000_100] = bytes(b ^ 0xFF for b in blob[2_000_000:2_000_100])
    path.write_bytes(bytes(blob))
    return path.name, "differs from the checksum TFDS registers"


def _wrong_magic(raw):
    write_idx(raw / "t10k-images-idx3-ubyte.gz", 0x00000801, (10_000, 28, 28), bytes(10_000 * 784))
    return "t10k-images-idx3-ubyte.gz", "magic number 0x00000801, expected 0x00000803"


def _wrong_count(raw):
    write_idx(raw / "t10k-labels-idx1-ubyte.gz", 0x00000801, (9_000,), bytes(9_000))
    return "t10k-labels-idx1-ubyte.gz", "holds 9000 items, expected 10000"


def _images_32(raw):
    write_idx(raw / "t10k-images-idx3-ubyte.gz", 0x00000803, (10_000, 32, 32), bytes(10_000 * 32 * 32))
    return "t10k-images-idx3-ubyte.gz", "images are 32x32, expected 28x28"


def _missing(raw):
    (raw / "train-images-idx3-ubyte.gz").unlink()
    return "train-images-idx3-ubyte.gz", "file missing"


def _label_out_of_range(raw):
    labels = np.zeros(10_000, np.uint8)
    labels[17] = 12
    write_idx(raw / "t10k-labels-idx1-ubyte.gz", 0x00000801, (10_000,), labels.tobytes())
    return "t10k-labels-idx1-ubyte.gz", "label 12 at index 17 is out of range 0..9"


DAMAGES = [_truncate, _corrupt, _wrong_magic, _wrong_count, _images_32, _missing, _label_out_of_range]


@pytest.mark.parametrize("source", data.SOURCES)
@pytest.mark.parametrize("damage", DAMAGES)
def test_bad_data_files_are_named_and_nothing_is_exported(raw_copy, tmp_path, source, damage):
    name, problem = damage(raw_copy)
    base = tmp_path / "models" / "fashion_mnist"
    config = training.Config(
        epochs=1, source=source, raw_dir=str(raw_copy), tfds_dir=str(tmp_path / "tfds"), export_dir=str(base)
    )
    with pytest.raises(data.DataError) as error:
        training.run(config)
    message = str(error.value)
    assert "\n" not in message and name in message and problem in message, message
    assert layout.version_paths(base) == {}


@pytest.mark.slow
@pytest.mark.parametrize("source", data.SOURCES)
def test_a_bad_data_file_stops_the_script_with_one_line(raw_copy, tmp_path, source):
    name, problem = _corrupt(raw_copy)
    done = run_script(
        "train.py", "--epochs=1", f"--source={source}", f"--raw_dir={raw_copy}",
        f"--tfds_dir={tmp_path / 'tfds'}", f"--export_dir={tmp_path / 'models' / 'fashion_mnist'}",
    )  # fmt: skip
    assert done.returncode != 0
    (line,) = error_lines(done)
    assert line.startswith("error: ") and name in line and problem in line, line
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "models" / "fashion_mnist").exists() or layout.version_paths(tmp_path / "models" / "fashion_mnist") == {}


@pytest.mark.slow
def test_traceback_only_on_request(raw_copy, tmp_path):
    _missing(raw_copy)
    done = run_script("train.py", f"--raw_dir={raw_copy}", "--source=idx", "--verbosity=1", "--export_dir=")
    assert done.returncode != 0 and "Traceback" in done.stderr and "DataError" in done.stderr


def test_interrupted_tfds_prepare_does_not_break_the_next_run(first_user, tfds_reference):
    # conftest's first user: train.py killed while TFDS wrote examples into its incomplete.* folder, then again.
    assert first_user.killed.returncode == -signal.SIGKILL
    assert first_user.killed.stdout.startswith("building TFDS fashion_mnist from the files in ")
    assert first_user.first.returncode == 0, first_user.first.stderr[-3000:]
    builder = data.prepare_tfds(data.DEFAULT_RAW_DIR, first_user.home / "tensorflow_datasets")  # prepared: a no-op
    assert builder.is_prepared() and builder.info.splits["test"].num_examples == 10_000
    # TFDS's own records, decoded (not the package's copy), hold exactly the files' examples, in TFDS's order.
    for split in data.RAW_FILES:
        in_file_order = np.argsort(data.tfds_order(split, data.SPLIT_SIZES[split]))
        for got, expected in zip(tfds_reference[split], data.load_arrays(split, "idx")):
            np.testing.assert_array_equal(got[in_file_order], expected)


def test_nothing_uses_pickle():
    sources = [*pathlib.Path(REPO, "fmnist_tf").rglob("*.py"), *pathlib.Path(REPO, "scripts").glob("*.py")]
    for path in sources:
        text = path.read_text()
        for word in ("pickle", "joblib.dump", "joblib.load", "allow_pickle", "np.load(", "dill"):
            assert word not in text, f"{path} uses {word}"
    assert len(sources) >= 8
