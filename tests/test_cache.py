"""The array cache beside TFDS's prepared fashion_mnist: it holds what TFDS yields, is read without TFDS, and a
damaged or stale cache is rebuilt (never read as data)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from fmnist_tf import data
from fmnist_tf.data import cache, sources


@pytest.fixture
def cached_copy(tfds_dir, tmp_path):
    """A private copy of the prepared TFDS dir and its cache (times kept, so the cache stays valid):
    (tfds dir, cache folder)."""
    copy = shutil.copytree(tfds_dir, tmp_path / "tfds", copy_function=shutil.copy2)
    return str(copy), cache.find(str(copy))


def _assert_equal(got, expected):
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def test_the_cache_holds_what_tfds_yields_and_what_the_idx_files_hold(cached_copy, tfds_reference):
    tfds_dir, folder = cached_copy
    assert folder.parent.parent.name == data.TFDS_NAME and folder.name == cache.DIRNAME
    manifest = json.loads((folder / cache.MANIFEST).read_text())
    assert manifest["key"] == cache.cache_key(folder.parent)
    assert manifest["provenance"]["raw_sha256"] == data.registered_checksums()
    for split in data.RAW_FILES:
        _assert_equal(cache.read(split, tfds_dir), tfds_reference[split])
        _assert_equal(data.load_arrays(split, "tfds", tfds_dir=tfds_dir), tfds_reference[split])
        _assert_equal(data.load_arrays(split, "idx"), tfds_reference[split])


def test_a_valid_cache_is_read_without_importing_tfds(cached_copy, tfds_reference):
    tfds_dir, _ = cached_copy
    code = (
        "import sys, hashlib; from fmnist_tf import data; "
        f"images, labels = data.load_arrays('train', 'tfds', tfds_dir={tfds_dir!r}); "
        "print('tensorflow_datasets' in sys.modules, hashlib.sha256(images).hexdigest(), labels.sum())"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    images, labels = tfds_reference["train"]
    assert done.stdout.split() == ["False", cache._sha256(images), str(labels.sum())]


def _truncate(folder):
    path = folder / "train-images.bin"
    path.write_bytes(path.read_bytes()[:-784])


def _flip_a_byte(folder):
    path = folder / "train-images.bin"
    blob = bytearray(path.read_bytes())
    blob[1_234_567] ^= 0x01
    path.write_bytes(bytes(blob))


def _wrong_size(folder):
    with open(folder / "test-labels.bin", "ab") as f:
        f.write(bytes(8))


def _other_bytes_same_size(folder):
    # The first 10,000 training labels where the test labels belong: only the SHA-256 can tell.
    (folder / "test-labels.bin").write_bytes((folder / "train-labels.bin").read_bytes()[: 10_000 * 8])


def _missing_file(folder):
    (folder / "test-images.bin").unlink()


def _manifest_not_json(folder):
    (folder / cache.MANIFEST).write_text('{"key": ')


def _manifest_for_another_tfds(folder):
    manifest = json.loads((folder / cache.MANIFEST).read_text())
    manifest["key"]["tfds_release"] = "0.0.1"
    (folder / cache.MANIFEST).write_text(json.dumps(manifest))


def _manifest_describes_other_arrays(folder):
    manifest = json.loads((folder / cache.MANIFEST).read_text())
    manifest["arrays"]["train_images"]["shape"] = [60_000, 32, 32]
    (folder / cache.MANIFEST).write_text(json.dumps(manifest))


def _tfds_files_rewritten(folder):
    # TFDS's prepared files changed after the cache was made (a re-prepare, a copy): the key no longer matches.
    record = next(folder.parent.glob("*-train.tfrecord-*"))
    os.utime(record, ns=(record.stat().st_atime_ns, record.stat().st_mtime_ns + 1_000_000_000))


DAMAGES = {
    _truncate: "bytes, expected",
    _flip_a_byte: "SHA-256 differs",
    _wrong_size: "bytes, expected",
    _other_bytes_same_size: "SHA-256 differs",
    _missing_file: "unreadable",
    _manifest_not_json: "unreadable manifest",
    _manifest_for_another_tfds: "another TFDS release",
    _manifest_describes_other_arrays: "is not recorded as train-images.bin",
    _tfds_files_rewritten: "other prepared files",
}


@pytest.mark.parametrize("damage", DAMAGES, ids=lambda f: f.__name__.strip("_"))
def test_a_damaged_or_stale_cache_is_a_miss_then_rebuilt_never_data(damage, cached_copy, tfds_reference):
    tfds_dir, folder = cached_copy
    damage(folder)
    with pytest.raises(cache.CacheMiss, match=DAMAGES[damage]):
        for split in ("train", "test"):
            cache.read(split, tfds_dir)
    for split in ("train", "test"):
        _assert_equal(data.load_arrays(split, "tfds", tfds_dir=tfds_dir), tfds_reference[split])
        _assert_equal(cache.read(split, tfds_dir), tfds_reference[split])  # rebuilt in place


def test_a_writer_killed_midway_leaves_a_miss_and_its_leftovers_are_removed(cached_copy, tfds_reference):
    tfds_dir, folder = cached_copy
    # What a writer leaves when killed mid-write: the manifest already removed, half an array in a temporary file.
    (folder / cache.MANIFEST).unlink()
    leftover = folder / ".train-images.bin.tmp-999999999"  # above any pid_max: that writer is gone
    leftover.write_bytes((folder / "train-images.bin").read_bytes()[:1000])
    with pytest.raises(cache.CacheMiss, match="no array cache"):
        cache.read("train", tfds_dir)
    _assert_equal(data.load_arrays("train", "tfds", tfds_dir=tfds_dir), tfds_reference["train"])
    assert not leftover.exists() and cache.find(tfds_dir) == folder


def test_raw_files_fill_the_cache_only_when_they_agree_with_tfds(tfds_dir, tfds_reference, monkeypatch):
    builder = data.prepare_tfds(data.DEFAULT_RAW_DIR, tfds_dir)
    for split, arrays in sources._raw_arrays_equal_to_tfds(builder, data.DEFAULT_RAW_DIR).items():
        _assert_equal(arrays, tfds_reference[split])
    # A canonical order that is not TFDS's: the examples at the ends of each split no longer match.
    monkeypatch.setattr(sources, "tfds_order", lambda split, count: np.arange(count)[::-1])
    assert sources._raw_arrays_equal_to_tfds(builder, data.DEFAULT_RAW_DIR) is None


def test_without_usable_raw_files_the_cache_takes_tfds_decoding(cached_copy, tfds_reference, tmp_path):
    tfds_dir, folder = cached_copy
    (folder / "train-images.bin").unlink()
    nowhere = tmp_path / "nowhere"
    for split in ("train", "test"):
        _assert_equal(data.load_arrays(split, "tfds", raw_dir=nowhere, tfds_dir=tfds_dir), tfds_reference[split])
        _assert_equal(cache.read(split, tfds_dir), tfds_reference[split])
    assert json.loads((folder / cache.MANIFEST).read_text())["provenance"] == {"from": "TFDS's decoding of its prepared files"}


def test_a_cache_that_cannot_be_written_only_costs_time(cached_copy, tfds_reference):
    tfds_dir, folder = cached_copy
    shutil.rmtree(folder)
    folder.write_text("a file where the cache folder would go")
    _assert_equal(data.load_arrays("test", "tfds", tfds_dir=tfds_dir), tfds_reference["test"])
    with pytest.raises(cache.CacheMiss, match="no array cache"):
        cache.find(tfds_dir)


def test_the_default_tfds_dir_is_tfds_own(monkeypatch, tmp_path):
    from tensorflow_datasets.core import constants

    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    assert cache.tfds_data_dir() == tmp_path == type(tmp_path)(constants.get_default_data_dir())
    monkeypatch.delenv("TFDS_DATA_DIR")
    assert str(cache.tfds_data_dir()) == constants.get_default_data_dir()
    assert cache.tfds_data_dir(str(tmp_path / "x")) == tmp_path / "x"
