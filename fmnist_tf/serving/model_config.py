"""Listing a base path in TF Serving's ``models.config`` (``layout.model_config_path``: beside the base paths),
keeping every entry the user wrote there.

The file is a ``ModelServerConfig`` in protobuf text, read as TF Serving reads it (``layout.read_model_config``)
and written with protobuf's text_format (any path round-trips), replaced in one step. An entry of this model's
name for another base path is refused, never repointed: that name may be serving someone's model.
"""

import fcntl
import os
import pathlib

import tensorflow as tf
from google.protobuf import text_format

from fmnist_tf import storage
from fmnist_tf.serving import layout
from fmnist_tf.serving.export import ExportError


def read_listable_model_config(config_path, base_path, model_name=None):
    """The ``ModelServerConfig`` in ``config_path`` (None when there is no file yet); ModelConfigError when
    TF Serving would not parse it or an entry for ``base_path`` cannot be added to it (``model_name``, default
    the folder's name, lists another base path). Runs check this before they train, so that a bad file stops
    them before anything is written."""
    if not tf.io.gfile.exists(str(config_path)):
        return None
    config = layout.read_model_config(config_path)
    if config.WhichOneof("config") == "custom_model_config":
        raise layout.ModelConfigError(f"{config_path} holds a custom_model_config; list {base_path} yourself")
    _config_entry(config, config_path, _listed_path(base_path), model_name)
    return config


def _listed_path(base_path):
    """``base_path`` as models.config lists it: absolute and resolved locally, a URL as it is."""
    if storage.is_local(base_path):
        return str(pathlib.Path(storage.local_path(base_path)).resolve())
    return str(base_path).rstrip("/")


def _config_entry(config, config_path, base_path, model_name=None):
    """The entry of ``config`` named ``model_name`` (default: the base path's folder name), or None; ModelConfigError
    when that name already serves another base path (a user's own model is never repointed)."""
    model_name = layout.served_name(base_path, model_name)
    entry = next((e for e in config.model_config_list.config if e.name == model_name), None)
    if entry is not None and _listed_path(entry.base_path) != base_path:
        raise layout.ModelConfigError(
            f"{config_path} already lists model {model_name} at {entry.base_path}, not at this export's {base_path}: "
            "rename one of the two folders, or remove that entry"
        )
    return entry


def write_model_config(config_path, base_path, model_name=None):
    """Add or update ``model_name``'s entry (default: the base path's folder name) in TF Serving's
    ``config_path``, keeping every other entry; return ``config_path``.

    When the entry is there already the file is not touched; when it is added, the file is written anew in
    text_format's layout (comments are not kept). An entry of that name for another base path is refused
    (ModelConfigError), never repointed. ``base_path`` must hold a complete version (TF Serving refuses to start
    when a listed model cannot load). A file that does not parse is left as it is: ModelConfigError names it.
    """
    from tensorflow_serving.config import model_server_config_pb2

    local = storage.is_local(base_path)
    if local:
        config_path, base_path = pathlib.Path(config_path), pathlib.Path(base_path).resolve()
    else:  # a URL: TF Serving reads gs:// and s3:// base paths as they are
        config_path, base_path = str(config_path), str(base_path).rstrip("/")
    model_name = layout.served_name(base_path, model_name)
    found = layout.version_paths(base_path)
    if not found or not layout.is_saved_model(found[max(found)]):
        raise ExportError(f"{base_path} holds no complete version to list in {config_path}")
    # Exports of several models update one file: one writer at a time, each keeping the others' entries.
    # An object store has no such lock: there, one writer at a time is the caller's to arrange.
    lock = os.open(config_path.parent, os.O_RDONLY | os.O_DIRECTORY) if local else None
    try:
        if lock is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        config = read_listable_model_config(config_path, base_path, model_name)
        config = config or model_server_config_pb2.ModelServerConfig()
        entry = _config_entry(config, config_path, str(base_path), model_name)
        # Listed already (a later version of the same base path): the user's file stays as it is, byte for byte.
        if entry is None or entry.model_platform != "tensorflow":
            entry = entry or config.model_config_list.config.add(name=model_name, base_path=str(base_path))
            entry.model_platform = "tensorflow"
            storage.replace_file(config_path, text_format.MessageToString(config))
    finally:
        if lock is not None:
            os.close(lock)
    return config_path
