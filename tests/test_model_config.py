"""Listing a version's base path in TF Serving's models.config: a file TF Serving parses, odd paths round-tripped,
the user's entries kept, nothing listed that is not this model, a malformed file named and left alone."""

import os
import re
import shutil
import stat

import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from fmnist_tf.serving import export, layout, model_config
from fmnist_tf.model import build_model


@pytest.fixture(scope="module")
def version(tmp_path_factory):
    """An (untrained) softmax model's version under a base path named fashion_mnist: what models.config lists does
    not depend on training."""
    tf.keras.utils.set_random_seed(0)
    return export.export_saved_model(build_model(), tmp_path_factory.mktemp("models") / "fashion_mnist")


def test_model_config_parses_as_tf_serving_config(version, tmp_path):
    base = version.parent
    path = model_config.write_model_config(tmp_path / "models.config", base)
    config = text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())
    (entry,) = config.model_config_list.config
    assert entry.name == "fashion_mnist"
    assert entry.base_path == str(base.resolve()) and os.path.isabs(entry.base_path)
    assert entry.model_platform == "tensorflow"


def _copy_export(version, base):
    """A base path holding a copy of ``version`` as its version 1 (cheaper than another export)."""
    shutil.copytree(version, base / "1")
    return base


def _parse_config(path):
    return text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())


def test_model_config_round_trips_an_odd_base_path(version, tmp_path):
    base = _copy_export(version, tmp_path / 'my "best" models' / 'fashion "mnist" v2')
    path = model_config.write_model_config(base.parent / "models.config", base)
    (entry,) = _parse_config(path).model_config_list.config
    assert entry.base_path == str(base.resolve()) and entry.name == base.name


def test_model_config_keeps_the_users_entries_and_updates_only_this_model(version, tmp_path):
    base = _copy_export(version, tmp_path / "fashion_mnist")
    path = tmp_path / "models.config"
    users = (
        "# the user's own config\n"
        'model_config_list { config { name: "theirs" base_path: "/srv/models/theirs" model_platform: "tensorflow" '
        "model_version_policy { all {} } } "
        f'config {{ name: "fashion_mnist" base_path: "{base.resolve()}" model_platform: "tensorflow" '
        'version_labels { key: "stable" value: 1 } } }\n'
    )
    path.write_text(users)
    model_config.write_model_config(path, base)
    assert path.read_text() == users  # listed already: not rewritten
    theirs, mine = _parse_config(path).model_config_list.config
    assert (theirs.name, theirs.base_path, theirs.model_version_policy.WhichOneof("policy_choice")) == (
        "theirs", "/srv/models/theirs", "all"
    )
    assert (mine.name, mine.base_path, dict(mine.version_labels)) == ("fashion_mnist", str(base.resolve()), {"stable": 1})
    # Several model kinds side by side: each its own entry.
    mlp = _copy_export(version, tmp_path / "fashion_mnist_mlp")
    model_config.write_model_config(path, mlp)
    assert [e.name for e in _parse_config(path).model_config_list.config] == ["theirs", "fashion_mnist", "fashion_mnist_mlp"]
    assert stat.S_IMODE(path.stat().st_mode) & stat.S_IROTH


def test_model_config_never_lists_a_folder_that_is_not_this_model(version, tmp_path):
    (tmp_path / "runs" / "3").mkdir(parents=True)  # a digit-named child does not make a model
    _copy_export(version, tmp_path / "other_export")  # a real export beside it: not ours to list either
    base = _copy_export(version, tmp_path / "fashion_mnist")
    path = model_config.write_model_config(tmp_path / "models.config", base)
    assert [e.name for e in _parse_config(path).model_config_list.config] == ["fashion_mnist"]
    with pytest.raises(export.ExportError, match="holds no complete version"):
        model_config.write_model_config(path, tmp_path / "runs")


def test_a_malformed_model_config_is_named_and_left_alone(version, tmp_path):
    base = _copy_export(version, tmp_path / "fashion_mnist")
    path = tmp_path / "models.config"
    text = 'model_config_list { config { name: "a" base_path: "/x"\n'  # unbalanced: TF Serving would not start
    path.write_text(text)
    with pytest.raises(layout.ModelConfigError, match=re.escape(str(path))):
        model_config.write_model_config(path, base)
    assert path.read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fashion_mnist", "models.config"]
