"""A workdir's faults: damaged checkpoints and state, a lost or short history, a diverged epoch, a full disk, a
workdir that cannot be used. Nothing restarts silently over good checkpoints; every stop is one line."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from conftest import built_model_and_optimizer, error_lines, run_script, tmpfs
from fmnist_tf import training
from fmnist_tf.training import checkpoints
from fmnist_tf.training.checkpoints import CheckpointError, Checkpoints
from fmnist_tf.training.workdir import RUN_FILE, Workdir, WorkdirError

TRAIN = ("--source=idx", "--export_dir=")


def _history(epochs):
    return {k: [0.1 * (i + 1) for i in range(epochs)] for k in checkpoints.HISTORY_KEYS}


@pytest.fixture
def two_epochs(tmp_path):
    """A workdir whose checkpoints hold epochs 1 and 2 (ckpt-1, ckpt-2), each with its own kernel values."""
    model, optimizer = built_model_and_optimizer("softmax")
    saver = Checkpoints(str(tmp_path), model, optimizer, chief=True)
    for epoch in (1, 2):
        model.trainable_variables[0].assign(tf.fill(model.trainable_variables[0].shape, float(epoch)))
        saver.save(epoch, _history(epoch))
    return tmp_path, tmp_path / checkpoints.CHECKPOINTS


def _restore(workdir):
    model, optimizer = built_model_and_optimizer("softmax")
    start, history = Checkpoints(str(workdir), model, optimizer, chief=True).restore()
    return start, history, float(model.trainable_variables[0].numpy().flat[0])


def _flip(path, at=100):
    blob = bytearray(path.read_bytes())
    blob[at] ^= 0xFF
    path.write_bytes(bytes(blob))


def _truncate(path):
    path.write_bytes(path.read_bytes()[:50])


@pytest.mark.parametrize("damage", [_flip, _truncate])
def test_a_damaged_latest_checkpoint_is_skipped_with_its_reason_and_the_previous_restored(two_epochs, damage, capsys):
    workdir, folder = two_epochs
    damage(folder / "ckpt-2.data-00000-of-00001")
    assert checkpoints.completed_epochs(str(workdir)) == 1
    start, history, kernel = _restore(workdir)
    assert (start, kernel, history) == (1, 1.0, _history(1))
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"warning: skipped the damaged checkpoint {folder / 'ckpt-2'} (") and str(folder / "ckpt-1") in line


@pytest.mark.parametrize(
    "damage, said",
    [
        (lambda folder: (folder / "checkpoint").unlink(), "checkpoint is missing"),
        (lambda folder: (folder / "checkpoint").write_text("garbage {{"), "checkpoint does not parse"),
        (lambda folder: (folder / "ckpt-2.index").unlink(), "names ckpt-2 as the latest"),
    ],
)
def test_a_missing_or_garbage_state_file_or_index_resumes_from_the_newest_intact_checkpoint(two_epochs, damage, said, capsys):
    workdir, folder = two_epochs
    damage(folder)
    expected = 1 if not (folder / "ckpt-2.index").exists() else 2
    start, history, kernel = _restore(workdir)
    assert (start, kernel) == (expected, float(expected)) and len(history["loss"]) == expected
    (line,) = capsys.readouterr().err.splitlines()
    assert said in line and f"resuming from {folder / f'ckpt-{expected}'}" in line
    # The next save continues the numbering: it never writes ckpt-1 over the intact one.
    model, optimizer = built_model_and_optimizer("softmax")
    saver = Checkpoints(str(workdir), model, optimizer, chief=True)
    saver.restore()
    before = (folder / "ckpt-1.data-00000-of-00001").read_bytes()
    saver.save(expected + 1, _history(expected + 1))
    assert (folder / f"ckpt-{expected + 1}.index").exists()
    assert (folder / "ckpt-1.data-00000-of-00001").read_bytes() == before
    assert checkpoints.completed_epochs(str(workdir)) == expected + 1


def test_no_intact_checkpoint_stops_with_one_line_naming_each(two_epochs):
    workdir, folder = two_epochs
    _flip(folder / "ckpt-2.data-00000-of-00001")
    _flip(folder / "ckpt-1.index", at=10)
    for call in (lambda: checkpoints.completed_epochs(str(workdir)), lambda: _restore(workdir)):
        with pytest.raises(CheckpointError) as error:
            call()
        message = str(error.value)
        assert "\n" not in message and message.startswith(f"no intact checkpoint in {folder} (")
        assert str(folder / "ckpt-2") in message and str(folder / "ckpt-1") in message


@pytest.mark.parametrize(
    "damage, said",
    [
        (lambda path: path.unlink(), "history.json is missing, so"),
        (lambda path: path.write_text("{not json"), "history.json is not JSON"),
        (lambda path: path.write_text(json.dumps(_history(1))), "history.json holds fewer epochs of loss than the 2 of"),
    ],
)
def test_a_lost_garbage_or_short_history_is_named_not_resumed_with_a_bogus_one(two_epochs, damage, said):
    workdir, folder = two_epochs
    damage(folder / checkpoints.HISTORY_FILE)
    with pytest.raises(CheckpointError) as error:
        _restore(workdir)
    assert "\n" not in str(error.value) and said in str(error.value), error.value


def test_a_diverged_epoch_is_not_saved_and_the_previous_checkpoints_stay(two_epochs):
    workdir, folder = two_epochs
    model, optimizer = built_model_and_optimizer("softmax")
    saver = Checkpoints(str(workdir), model, optimizer, chief=True)
    saver.restore()
    model.trainable_variables[0].assign(tf.fill(model.trainable_variables[0].shape, np.nan))
    with pytest.raises(CheckpointError, match=r"training diverged: after epoch 3 the weights .* hold NaN or inf"):
        saver.save(3, _history(3))
    assert not (folder / "ckpt-3.index").exists() and checkpoints.completed_epochs(str(workdir)) == 2


def test_a_run_json_that_does_not_parse_is_named(tmp_path):
    (tmp_path / RUN_FILE).write_text("{")
    with pytest.raises(WorkdirError, match=f"{tmp_path / RUN_FILE} is not JSON"):
        Workdir(tmp_path).read_record()


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_the_previous_stays(tmp_path):
    with tmpfs(tmp_path / "small", "size=100k") as workdir:
        model, optimizer = built_model_and_optimizer("softmax")  # a checkpoint with RMSprop's moments is ~63 KB: one fits, two do not
        saver = Checkpoints(str(workdir), model, optimizer, chief=True)
        saver.save(1, _history(1))
        with pytest.raises(CheckpointError) as error:
            saver.save(2, _history(2))
        message = str(error.value)
        assert "\n" not in message and message.startswith(f"cannot write the checkpoint of epoch 2 in {workdir}")
        assert "No space left on device" in message and "function_node" not in message, message
        assert checkpoints.completed_epochs(str(workdir)) == 1
        assert not [p for p in (workdir / "checkpoints").iterdir() if ".tmp-" in p.name]


def test_glob_characters_in_a_workdir_are_refused_before_any_work(tmp_path):
    config = training.Config(epochs=1, source="idx", workdir=str(tmp_path / "runs[v2]"), export_dir="", verbose=False)
    with pytest.raises(ValueError, match=r"workdir .*runs\[v2\]: TensorFlow's file layer reads \[ \] in a path as a glob"):
        training.run(config)
    assert not (tmp_path / "runs[v2]").exists()


@pytest.mark.slow
def test_scripts_resume_past_a_damaged_checkpoint_and_stop_in_one_line_on_a_lost_history(tmp_path):
    workdir = tmp_path / "w"
    first = run_script("train.py", *TRAIN, "--epochs=2", f"--workdir={workdir}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    folder = workdir / "checkpoints"
    intact = (folder / "ckpt-1.data-00000-of-00001").read_bytes()
    _flip(folder / "ckpt-2.data-00000-of-00001")
    resumed = run_script("train.py", *TRAIN, "--epochs=3", f"--workdir={workdir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (line,) = error_lines(resumed)
    assert line.startswith(f"warning: skipped the damaged checkpoint {folder / 'ckpt-2'} (") and "Checksum" in line
    assert "Resuming from" in resumed.stdout and "after epoch 1" in resumed.stdout
    assert resumed.stdout.count("Epoch ") == 2 and (folder / "ckpt-1.data-00000-of-00001").read_bytes() == intact

    (folder / checkpoints.HISTORY_FILE).unlink()
    lost = run_script("train.py", *TRAIN, "--epochs=4", f"--workdir={workdir}", cwd=tmp_path)
    assert lost.returncode == 1 and "Epoch " not in lost.stdout
    (line,) = error_lines(lost)
    assert line.startswith(f"error: {folder / checkpoints.HISTORY_FILE} is missing"), line

    shutil.rmtree(workdir)
    workdir.write_text("a file")
    as_file = run_script("train.py", *TRAIN, "--epochs=1", f"--workdir={workdir}", cwd=tmp_path)
    assert as_file.returncode == 1
    assert error_lines(as_file) == [f"error: workdir {workdir} is a file, not a folder: use another --workdir"]


@pytest.mark.slow
def test_a_diverging_run_stops_in_one_line_and_publishes_nothing(tmp_path):
    base = tmp_path / "models" / "fm"
    for workdir in ([f"--workdir={tmp_path / 'w'}"], []):
        done = run_script("train.py", "--source=idx", "--epochs=1", "--learning_rate=inf", f"--export_dir={base}",
                          *workdir, cwd=tmp_path)  # fmt: skip
        assert done.returncode == 1, done.stderr[-3000:]
        (line,) = error_lines(done)
        assert line.startswith("error: training diverged: ") and "NaN or inf" in line and "--learning_rate" in line
        assert not (base.parent / "models.config").exists() and not [p for p in base.iterdir() if p.name.isdigit()]
    assert not os.path.exists(tmp_path / "w" / "checkpoints" / "ckpt-1.index")  # the diverged epoch was not saved
