"""Files under paths that are local folders or URLs TensorFlow's file layer serves (``gs://``, ``s3://`` with
its plugin, ``hdfs://``, ``ram://`` in-process): every read and write of a run goes through ``tf.io.gfile``.

``pathlib`` would turn ``gs://bucket/m`` into ``gs:/bucket/m``, a local folder; paths stay strings here and
are joined with ``os.path.join``, which keeps a URL's ``//``.
"""

import contextlib
import json
import os
import pathlib
import re
import secrets
import tempfile

import tensorflow as tf

gfile = tf.io.gfile
# TF's file layer reads these in a path as glob syntax (GetMatchingPaths, used to find a SavedModel's variables
# and a checkpoint's index): a folder named with them is written, then never found again.
GLOB_CHARACTERS = "[]\\"


class StorageError(OSError):
    """A file or folder cannot be used: the message names it and says what to do."""


def reason(error):
    """The first line of an OSError's or tf.errors.OpError's message (TF's run to several lines), without the
    names of TF's internal functions and ops around it."""
    text = getattr(error, "strerror", None) or getattr(error, "message", None) or str(error)
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:[^\]]*\]", "", text).strip()
    first = re.sub(r"\s*name:\s*$", "", text.splitlines()[0]) if text else ""  # an eager op's empty name
    return first or type(error).__name__


def check_glob_free(path, what):
    """``path`` unless it holds a character TF's file layer reads as glob syntax; ValueError naming ``what``."""
    found = sorted({c for c in str(path) if c in GLOB_CHARACTERS})
    if found:
        raise ValueError(
            f"{what} {path}: TensorFlow's file layer reads {' '.join(found)} in a path as a glob pattern and "
            "would not find the files again; choose a path without [, ] or \\"
        )
    return path


def pid_alive(pid):
    """True while process ``pid`` runs on this host (another user's included); False for a gone or invalid pid."""
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:  # alive, another user's process
        pass
    return True


def is_url(path):
    """True for a path with a scheme (``gs://``, ``s3://``, ``ram://``, ``file://``): not for ``pathlib`` or ``os``."""
    return re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*://", str(path)) is not None


def is_local(path):
    """True for a plain path (or ``file://``): a POSIX file system, with atomic rename and exclusive create."""
    path = str(path)
    return not is_url(path) or path.startswith("file://")


def local_path(path):
    """A local ``path`` without its ``file://`` scheme, for the os functions."""
    path = str(path)
    return path[len("file://") :] if path.startswith("file://") else path


def ensure_writable_dir(path):
    """Create the local folder ``path`` if needed and prove a file can be made in it; OSError otherwise."""
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=path):
        pass
    return path


def replace_file(path, content):
    """Replace the file ``path`` (local, or a URL) with ``content`` (bytes or str) so that a reader sees the old
    file or the new, never a part; return ``path``. StorageError naming it when it cannot be written.

    Written beside it under a name of its own, then renamed over it. Locally the temporary is created exclusively
    and gets open()'s mode under the umask, and the rename is rename(2); on an object store TF's rename is a copy
    and a delete, and an object appears whole once its upload completes. A failure (a full disk) leaves no
    temporary behind and the old file as it was.
    """
    local = is_local(path)
    tmp = f"{local_path(path) if local else path}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    mode = "b" if isinstance(content, bytes) else ""
    try:
        if local:
            with open(tmp, "x" + mode) as f:
                f.write(content)
            os.replace(tmp, local_path(path))
        else:
            with gfile.GFile(tmp, "w" + mode) as f:
                f.write(content)
            gfile.rename(tmp, str(path), overwrite=True)
    except (OSError, tf.errors.OpError) as e:
        with contextlib.suppress(OSError, tf.errors.OpError):
            gfile.remove(tmp)
        raise StorageError(f"{path} cannot be written: {reason(e)}; it is unchanged: free space or fix the folder") from e
    return path


def check_writable_file(path, what):
    """Before any work: make the folder of the file ``path`` if needed and prove a file can be created in it.

    StorageError naming ``what`` (e.g. the flag) otherwise, so that a run's figures are not lost at its end.
    """
    path = str(path)
    if gfile.isdir(path):
        raise StorageError(f"{what} {path} is a folder: name a file")
    folder = os.path.dirname(path.rstrip("/")) or "."
    try:
        if is_local(path):
            ensure_writable_dir(local_path(folder))
        else:
            gfile.makedirs(folder)
    except (OSError, tf.errors.OpError) as e:
        raise StorageError(f"{what} {path} cannot be written: {reason(e)}; choose another path") from e
    return path


def read_text(path):
    with gfile.GFile(path, "r") as f:
        return f.read()


def write_json(path, value):
    """``value`` as indented JSON at ``path`` (``replace_file``: never seen half-written)."""
    return replace_file(path, json.dumps(value, indent=2) + "\n")


def read_json(path):
    """The JSON value in ``path``; tf.errors.NotFoundError when it is missing, ValueError naming it when it does
    not parse."""
    try:
        return json.loads(read_text(path))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not JSON ({e})") from e


def copy_tree(src, dst, last=()):
    """Copy the files under ``src`` to ``dst`` one by one, the files named in ``last`` (relative paths) last.

    For object stores, where a folder cannot be renamed in one step: a reader that waits for the ``last``
    files finds every other file already complete.
    """
    src = str(src).rstrip("/")
    files = []
    for folder, _, names in gfile.walk(src):
        files.extend(os.path.join(folder[len(src) :].lstrip("/"), name) for name in names)
    for relative in sorted(files, key=lambda f: (f in last, f)):
        if not gfile.exists(os.path.join(src, relative)):
            continue  # a phantom of ram://'s listing (see remove_tree)
        gfile.makedirs(os.path.dirname(os.path.join(dst, relative)))
        gfile.copy(os.path.join(src, relative), os.path.join(dst, relative), overwrite=True)


def remove_tree(path):
    """Delete the folder ``path`` with everything under it.

    TF's ram:// file system lists children by name prefix: beside "assets.extra/x" the folder "assets"
    seems to hold ".extra/x", which does not exist, and rmtree fails on it once all else is deleted.
    Object stores list by "/"-delimited prefix and show no such phantom.
    """
    try:
        gfile.rmtree(path)
    except tf.errors.NotFoundError:
        if gfile.exists(path):
            raise
