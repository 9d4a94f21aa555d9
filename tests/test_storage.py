"""Files through TF's file layer: whole-file replacement (local and a URL), paths TF would glob, pid liveness."""

import os
import subprocess
import uuid

import pytest
import tensorflow as tf

from fmnist_tf import storage


def test_a_replaced_local_file_is_the_new_content_with_the_umask_mode_and_no_temporary(tmp_path):
    path = tmp_path / "models.config"
    path.write_text("old")
    old_umask = os.umask(0o027)
    try:
        assert storage.replace_file(path, "new") == path
        storage.replace_file(tmp_path / "model.tflite", b"\x00\x01")
    finally:
        os.umask(old_umask)
    assert path.read_text() == "new" and (tmp_path / "model.tflite").read_bytes() == b"\x00\x01"
    assert oct(path.stat().st_mode & 0o777) == oct(0o640)  # open()'s 0666 under the umask, not mkstemp's 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tflite", "models.config"]


def test_a_file_that_cannot_be_replaced_is_named_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "figures.json"
    (path / "inside").mkdir(parents=True)  # a folder where the file goes: the final rename fails
    with pytest.raises(storage.StorageError, match=f"{path} cannot be written: .*it is unchanged"):
        storage.replace_file(path, "new")
    assert [p.name for p in tmp_path.iterdir()] == ["figures.json"] and (path / "inside").is_dir()


def test_a_file_at_a_url_is_replaced_through_tfs_file_layer():
    folder = f"ram://storage-{uuid.uuid4().hex}"
    tf.io.gfile.makedirs(folder)
    storage.write_json(f"{folder}/m.json", {"a": 1})
    storage.write_json(f"{folder}/m.json", {"a": 2})
    assert storage.read_json(f"{folder}/m.json") == {"a": 2}
    assert tf.io.gfile.listdir(folder) == ["m.json"]


def test_urls_and_local_paths_are_told_apart():
    assert storage.is_url("gs://bucket/m") and storage.is_url("ram://x") and not storage.is_url("/tmp/gs:/x")
    assert storage.is_local("runs/1") and storage.is_local("file:///tmp/x") and not storage.is_local("s3://b/k")
    assert storage.local_path("file:///tmp/x") == "/tmp/x"


def test_paths_tf_would_read_as_globs_are_refused_with_the_characters_named():
    assert storage.check_glob_free("runs/v2*", "workdir") == "runs/v2*"  # * and ? match themselves in TF
    with pytest.raises(ValueError, match=r"workdir runs\[v2\]: .* reads \[ \] in a path as a glob"):
        storage.check_glob_free("runs[v2]", "workdir")


def test_a_pid_is_alive_while_its_process_runs():
    process = subprocess.Popen(["sleep", "30"])
    try:
        assert storage.pid_alive(process.pid)
    finally:
        process.kill()
        process.wait()
    assert not storage.pid_alive(process.pid) and not storage.pid_alive("not a pid") and not storage.pid_alive(None)
