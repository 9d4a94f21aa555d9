"""TFDS's records decoded once (``Dataset.save`` beside them): what trains is what TFDS holds, a rewritten record
file is read again, and a damaged copy is rebuilt or named in one line, never read as data."""

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import error_lines, run_script
from fmnist_tf import data
from fmnist_tf.data import decoded


@pytest.fixture
def tfds_copy(tfds_dir, tmp_path):
    """A private copy of the prepared TFDS dir with its decoded copies (times kept, so they stay valid)."""
    return str(shutil.copytree(tfds_dir, tmp_path / "tfds", copy_function=shutil.copy2))


def _snapshot_files(folder):
    return sorted(path for path in folder.rglob("*.snapshot"))


def _assert_equal(got, expected):
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def test_the_copy_holds_what_tfds_yields_and_is_read_without_importing_tfds(tfds_copy, tfds_reference):
    for split in data.RAW_FILES:
        folder, manifest = decoded.find(tfds_copy, split)
        assert folder.parent.name == decoded.DIRNAME and folder.parent.parent.parent.name == data.TFDS_NAME
        assert manifest["examples"] == data.SPLIT_SIZES[split] and manifest["image_shape"] == [28, 28, 1]
        assert manifest["class_names"] == list(data.CLASS_NAMES)
        _assert_equal(data.load_arrays(split, "tfds", tfds_dir=tfds_copy), tfds_reference[split])
    code = (
        "import sys, hashlib; from fmnist_tf import data; "
        f"images, labels = data.load_arrays('train', 'tfds', tfds_dir={tfds_copy!r}); "
        "print('tensorflow_datasets' in sys.modules, hashlib.sha256(images).hexdigest(), labels.sum())"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    images, labels = tfds_reference["train"]
    assert done.stdout.split() == ["False", hashlib.sha256(images).hexdigest(), str(labels.sum())]


def _shift_labels(tfds_dir, split, start, stop):
    """Rewrite TFDS's ``split`` records with labels (l + 1) % 10 for examples [start, stop): the same sizes, valid
    records (a label below 10 is one varint byte either way)."""
    (path,) = (decoded.tfds_data_dir(tfds_dir) / data.TFDS_NAME).glob(f"[0-9]*/{data.TFDS_NAME}-{split}.tfrecord-*")
    size = path.stat().st_size
    records = [r.numpy() for r in tf.data.TFRecordDataset(str(path))]
    with tf.io.TFRecordWriter(str(path)) as writer:
        for i, record in enumerate(records):
            if start <= i < stop:
                example = tf.train.Example.FromString(record)
                label = example.features.feature["label"].int64_list.value
                label[0] = (label[0] + 1) % 10
                record = example.SerializeToString()
            writer.write(record)
    assert path.stat().st_size == size


def test_rewritten_records_are_decoded_again(tfds_copy, tfds_reference):
    old_folder, _ = decoded.find(tfds_copy, "train")
    _shift_labels(tfds_copy, "train", 600, 59_400)
    assert decoded.find(tfds_copy, "train") is None  # the key names the records' sizes and times
    images, labels = data.load_arrays("train", "tfds", tfds_dir=tfds_copy)
    expected_images, expected_labels = tfds_reference["train"]
    np.testing.assert_array_equal(images, expected_images)
    np.testing.assert_array_equal(labels[:600], expected_labels[:600])
    np.testing.assert_array_equal(labels[600:59_400], (expected_labels[600:59_400] + 1) % 10)
    new_folder, _ = decoded.find(tfds_copy, "train")
    assert new_folder != old_folder and not old_folder.exists()  # the stale copy is gone


def test_the_main_job_trains_on_what_tfds_holds(tfds_copy, first_user):
    reference = json.loads((first_user.cwd / "m.json").read_text())  # the same command on the intact records
    _shift_labels(tfds_copy, "train", 600, 59_400)
    done = run_script("train.py", "--epochs=1", f"--tfds_dir={tfds_copy}", "--export_dir=", "--metrics_json=m.json",
                      cwd=tfds_copy)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    shifted = json.loads((pathlib.Path(tfds_copy) / "m.json").read_text())
    # Trained on labels shifted by one class, scored on the intact test labels: far below the reference.
    assert reference["test_accuracy"] > 0.80 and shifted["test_accuracy"] < 0.2
    assert shifted["history"]["loss"] != reference["history"]["loss"]


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_a_byte(path):
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize(
    "damage",
    [
        lambda folder: _truncate(_snapshot_files(folder)[0]),
        lambda folder: _snapshot_files(folder)[0].unlink(),
        lambda folder: (folder / decoded.MANIFEST).write_text("{not json"),
        lambda folder: (folder / decoded.MANIFEST).unlink(),
    ],
    ids=["truncated", "missing file", "garbage manifest", "no manifest"],
)
def test_a_copy_damaged_in_size_is_rebuilt_from_tfds(tfds_copy, tfds_reference, damage):
    folder, _ = decoded.find(tfds_copy, "test")
    damage(folder)
    assert decoded.find(tfds_copy, "test") is None
    _assert_equal(data.load_arrays("test", "tfds", tfds_dir=tfds_copy), tfds_reference["test"])
    assert decoded.find(tfds_copy, "test") is not None


def test_a_copy_with_a_flipped_byte_stops_with_one_line_naming_it(tfds_copy):
    folder, _ = decoded.find(tfds_copy, "train")
    _flip_a_byte(_snapshot_files(folder)[0])
    with pytest.raises(data.DataError, match=f"reading {folder} failed .*corrupted record.*delete it"):
        data.load_arrays("train", "tfds", tfds_dir=tfds_copy)
    done = run_script("train.py", "--epochs=1", f"--tfds_dir={tfds_copy}", "--export_dir=", cwd=tfds_copy)
    assert done.returncode == 1
    (line,) = error_lines(done)
    assert line.startswith(f"error: reading {folder} failed (") and "delete it" in line


def test_a_tfds_dir_where_no_copy_can_be_written_is_read_directly(tfds_copy, tfds_reference):
    (version_dir,) = (pathlib.Path(tfds_copy) / data.TFDS_NAME).glob("[0-9]*")
    shutil.rmtree(version_dir / decoded.DIRNAME)
    (version_dir / decoded.DIRNAME).write_text("a file where the copies would go")
    examples = data.load_examples("test", "tfds", tfds_dir=tfds_copy)
    assert examples.origin == str(version_dir)
    _assert_equal(data.to_numpy(examples), tfds_reference["test"])


def _fake_version_dir(root):
    """A TFDS version folder as TFDS leaves it: its record files and dataset_info.json (contents irrelevant here)."""
    version_dir = root / data.TFDS_NAME / "3.0.1"
    version_dir.mkdir(parents=True)
    for name in ("dataset_info.json", f"{data.TFDS_NAME}-train.tfrecord-00000-of-00001"):
        (version_dir / name).write_bytes(b"x" * 100)
    return version_dir


def test_the_key_follows_every_file_tfds_wrote_and_find_checks_the_manifest(tmp_path):
    version_dir = _fake_version_dir(tmp_path)
    key = decoded.cache_key(version_dir, "train")
    assert decoded.cache_key(version_dir, "train") == key != decoded.cache_key(version_dir, "test")
    assert decoded.find(str(tmp_path), "train") is None  # no copy yet
    # A complete copy: its files and the manifest listing their sizes.
    folder = version_dir / decoded.DIRNAME / f"train-{key}"
    (folder / "shard").mkdir(parents=True)
    (folder / "shard" / "0.snapshot").write_bytes(b"y" * 10)
    manifest = {"files": {"shard/0.snapshot": 10}, "examples": 1, "blocks": 1, "image_shape": [28, 28, 1]}
    (folder / decoded.MANIFEST).write_text(json.dumps(manifest))
    assert decoded.find(str(tmp_path), "train") == (folder, manifest)
    (folder / "shard" / "0.snapshot").write_bytes(b"y" * 9)  # truncated
    assert decoded.find(str(tmp_path), "train") is None
    (folder / "shard" / "0.snapshot").write_bytes(b"y" * 10)
    records = version_dir / f"{data.TFDS_NAME}-train.tfrecord-00000-of-00001"
    records.write_bytes(b"z" * 100)  # the same size, rewritten: another time
    os.utime(records, ns=(records.stat().st_atime_ns, records.stat().st_mtime_ns + 1_000))
    assert decoded.cache_key(version_dir, "train") != key and decoded.find(str(tmp_path), "train") is None


def test_a_damaged_tfds_record_stops_with_one_line_naming_the_prepared_dataset(tfds_copy):
    (records,) = (pathlib.Path(tfds_copy) / data.TFDS_NAME).glob(f"[0-9]*/{data.TFDS_NAME}-train.tfrecord-*")
    _flip_a_byte(records)  # a new time too: the decoded copy is made again, from these records
    done = run_script("train.py", "--epochs=1", f"--tfds_dir={tfds_copy}", "--export_dir=", cwd=tfds_copy)
    assert done.returncode == 1
    (line,) = error_lines(done)
    assert line.startswith(f"error: reading TFDS's records in {records.parent} failed (") and "corrupted record" in line
    assert line.endswith(f"delete {records.parent} and run again (it is rebuilt from the shipped files)")
    assert decoded.find(tfds_copy, "train") is None  # nothing half-made left as a copy
