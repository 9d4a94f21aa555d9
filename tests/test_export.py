"""Publishing a version as TF Serving and other users see it: integer versions counting up, old ones untouched,
nothing left by a failed export, the modes of plain mkdir/open, the provenance record."""

import hashlib
import json
import os
import pathlib
import re
import shutil
import stat
import subprocess
import tempfile

import numpy as np
import pytest
import tensorflow as tf

from fmnist_tf import data
from fmnist_tf.serving import export, layout
from fmnist_tf.model import build_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """An (untrained) softmax model exported once with warmup records: (model, base path, version, test images).
    What publishing does with a version does not depend on training."""
    tf.keras.utils.set_random_seed(0)
    model = build_model()
    images, _ = data.load_arrays("test", source="idx")
    base = tmp_path_factory.mktemp("models") / "fashion_mnist"
    return model, base, export.export_saved_model(model, base, warmup_images=images[:4]), images


def _tree_digest(path):
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            h.update(os.path.relpath(full, path).encode())
            h.update(open(full, "rb").read())
    return h.hexdigest()


def test_versions_are_integers_counting_up_and_old_ones_untouched(exported):
    model, base, version, images = exported
    assert version == base / "1"
    before = _tree_digest(version)
    second = export.export_saved_model(model, base)
    assert second == base / "2"
    assert _tree_digest(version) == before
    assert layout.version_paths(base) == {1: version, 2: second}
    assert [p.name for p in base.iterdir() if p.name.startswith(export.TMP_PREFIX)] == []
    (base / "2").rename(base / ".scratch")  # leave the fixture's base path as it was, minus version 2
    assert list(layout.version_paths(base)) == [1]


def test_a_failed_export_leaves_no_version_and_others_unchanged(exported, monkeypatch):
    model, base, version, images = exported
    before = _tree_digest(version)
    listing = sorted(p.name for p in base.iterdir())

    def broken(version_dir, logs):
        raise OSError("disk full")

    monkeypatch.setattr(export, "_write_warmup", broken)
    with pytest.raises(OSError, match="disk full"):
        export.export_saved_model(model, base, warmup_images=images[:2])
    assert sorted(p.name for p in base.iterdir()) == listing
    assert _tree_digest(version) == before


def test_unwritable_export_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(export.ExportError, match="cannot be written"):
        export.check_writable(blocker / "fashion_mnist")


def _modes(version):
    found = {}
    for root, folders, files in os.walk(version):
        for name in folders + files:
            path = os.path.join(root, name)
            found[os.path.relpath(path, version)] = stat.S_IMODE(os.stat(path).st_mode)
    return found


@pytest.mark.parametrize(
    "umask, folder_mode, file_mode", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)], ids=["umask022", "umask027"]
)
def test_a_version_gets_the_modes_of_plain_mkdir_and_open(exported, tmp_path, umask, folder_mode, file_mode):
    model, _, _, _ = exported
    previous = os.umask(umask)
    try:
        version = export.export_saved_model(model, tmp_path / "fashion_mnist", warmup_images=np.zeros((1, 28, 28), np.uint8))
    finally:
        os.umask(previous)
    modes = _modes(version)
    assert {"saved_model.pb", "variables", layout.WARMUP_FILE, layout.PROVENANCE_FILE} <= set(modes)
    assert stat.S_IMODE(version.stat().st_mode) == folder_mode
    for name, mode in modes.items():
        assert mode == (folder_mode if (version / name).is_dir() else file_mode), name


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("runuser"), reason="needs root and runuser")
def test_another_user_can_read_every_file_of_a_version(exported):
    model, _, _, _ = exported
    # pytest's tmp_path sits under a 0700 folder: the other user needs a folder it can enter.
    parent = pathlib.Path(tempfile.mkdtemp(prefix="fmnist-modes-"))
    try:
        parent.chmod(0o755)
        previous = os.umask(0o022)
        try:
            version = export.export_saved_model(model, parent / "fashion_mnist", warmup_images=np.zeros((1, 28, 28), np.uint8))
        finally:
            os.umask(previous)
        paths = [str(version), *(str(version / name) for name in _modes(version))]
        # As nobody: each folder must be enterable and listable, each file readable; print what is not.
        script = 'for p; do if [ -d "$p" ]; then [ -r "$p" ] && [ -x "$p" ] || echo "$p"; else [ -r "$p" ] || echo "$p"; fi; done'
        check = ["runuser", "-u", "nobody", "--", "sh", "-c", script, "sh"]
        done = subprocess.run(check + paths, capture_output=True, text=True, check=True)
        assert done.stdout == "" and len(paths) >= 10
        version.chmod(0o700)  # what a mkdtemp folder renamed into place used to give
        done = subprocess.run(check + paths[:2], capture_output=True, text=True, check=True)
        assert done.stdout.split() == paths[:2]
    finally:
        shutil.rmtree(parent)


def test_provenance_is_recorded_in_the_version(exported, tmp_path):
    model, _, _, _ = exported
    provenance = {"model": "softmax", "figures": {"test_accuracy": 0.5}}
    version = export.export_saved_model(model, tmp_path / "fashion_mnist", provenance=provenance)
    record = json.loads((version / layout.PROVENANCE_FILE).read_text())
    assert record["model"] == "softmax" and record["figures"] == {"test_accuracy": 0.5}
    assert record["model_name"] == "fashion_mnist"
    assert record["versions"]["tensorflow"] == tf.__version__ and record["versions"]["keras"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", record["exported_at"])
