"""An export's faults: paths TF would glob, a base path inside a version, diverged weights, a full disk, a user's
models.config, and requests no client should send (oversized, zlib bombs, NaN). One line, or a named op."""

import os
import re
import struct
import subprocess
import zlib

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from conftest import error_lines, run_script, tmpfs
from fmnist_tf import storage, training
from fmnist_tf.serving import c_api, check, export, layout, model_config
from fmnist_tf.serving.signatures import MAX_BATCH, MAX_PNG_BATCH, MAX_PNG_BYTES, MAX_PNG_REQUEST_BYTES, encode_png
from fmnist_tf.model import build_model


@pytest.fixture(scope="module")
def version(tmp_path_factory):
    """An (untrained) softmax model's version: what the signatures accept or refuse does not depend on training."""
    tf.keras.utils.set_random_seed(0)
    return export.export_saved_model(build_model(), tmp_path_factory.mktemp("models") / "fashion_mnist")


@pytest.fixture(scope="module")
def signatures(version):
    return tf.saved_model.load(str(version)).signatures


def _nan_model():
    model = build_model()
    model.trainable_variables[0].assign(tf.fill(model.trainable_variables[0].shape, np.nan))
    return model


@pytest.fixture
def small_disk(tmp_path):
    """A 200 KB tmpfs at tmp_path/small (root only; skipped otherwise), unmounted afterwards."""
    with tmpfs(tmp_path / "small", "size=200k") as folder:
        yield folder


# --- Before any work: where a run may export ------------------------------------------------------------


@pytest.mark.parametrize("name", ["runs[v2]", "runs\\v2", "v]"])
def test_glob_characters_in_an_export_dir_are_refused_before_training(tmp_path, name):
    base = tmp_path / name / "fm"
    config = training.Config(epochs=1, source="idx", export_dir=str(base), verbose=False)
    with pytest.raises(ValueError) as error:
        config.validate()
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"export dir {base}: TensorFlow's file layer reads")
    assert not (tmp_path / name).exists()


def test_the_script_refuses_a_glob_export_dir_in_one_line(tmp_path):
    done = run_script("train.py", "--source=idx", "--export_dir=runs[v2]/fm", cwd=tmp_path)
    assert done.returncode == 1 and "Epoch" not in done.stdout
    (line,) = error_lines(done)
    assert line.startswith("error: export dir runs[v2]/fm: TensorFlow's file layer reads [ ] in a path as a glob")
    assert not (tmp_path / "runs[v2]").exists()


@pytest.mark.parametrize("inside", ["1", "1/variables", "1/assets/x"])
def test_an_export_dir_inside_a_published_version_is_refused_before_training(tmp_path, inside):
    base = tmp_path / "fm"
    published = export.export_saved_model(build_model(), base)
    before = sorted(p.relative_to(published) for p in published.rglob("*"))
    done = run_script("train.py", "--source=idx", f"--export_dir={base / inside}", cwd=tmp_path)
    assert done.returncode == 1 and "Epoch" not in done.stdout
    assert error_lines(done) == [
        f"error: export dir {base / inside} is inside the SavedModel {published}: exporting there would change a "
        f"published version; use a base path such as {base}"
    ]
    assert sorted(p.relative_to(published) for p in published.rglob("*")) == before
    assert not (tmp_path / "models.config").exists() and not (base / "models.config").exists()


# --- Diverged weights --------------------------------------------------------------------------------------


def test_non_finite_weights_are_never_exported(tmp_path):
    base = tmp_path / "fm"
    with pytest.raises(export.NonFiniteWeightsError, match=r"^training diverged: the weights .* hold NaN or inf"):
        export.export_saved_model(_nan_model(), base)
    assert layout.version_paths(base) == {}


def test_check_serving_fails_a_version_with_non_finite_weights(tmp_path):
    base = tmp_path / "fm"
    export._write_saved_model(_nan_model(), base / "1")  # as an older exporter would have published it
    done = run_script("check_serving.py", f"--model_dir={base}")
    assert done.returncode == 1
    (finite,) = [line for line in done.stdout.splitlines() if "finite weights" in line]
    assert finite.startswith("FAIL  finite weights: ") and "variables hold NaN or inf" in finite, finite
    assert "finite weights" in error_lines(done)[-1]
    assert done.stderr.splitlines() == error_lines(done)[-1:]  # the one line: no C++ log line of the loader


def test_check_serving_passes_finite_weights(version):
    assert check.finite_weights_check(version).ok


# --- A full disk, damaged files ---------------------------------------------------------------------------


def test_a_full_disk_during_an_export_is_one_line_and_publishes_nothing(small_disk):
    model = build_model("mlp")  # ~1 MB of weights: more than the disk holds
    with pytest.raises(export.ExportError) as error:
        export.export_saved_model(model, small_disk / "fm")
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"export to {small_disk / 'fm'} failed: "), message
    assert "No space left on device" in message and "no version was published" in message
    assert list((small_disk / "fm").iterdir()) == []


def test_a_full_disk_while_writing_models_config_names_it_and_leaves_no_temporary(version, small_disk):
    config_path = small_disk / "models.config"
    config_path.write_text("model_config_list {\n}\n")
    filler = os.open(small_disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:  # to the disk's last page
            os.write(filler, bytes(4096))
    except OSError:
        pass
    finally:
        os.close(filler)
    with pytest.raises(storage.StorageError) as error:
        model_config.write_model_config(config_path, version.parent)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{config_path} cannot be written: No space left on device")
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "models.config"]
    assert config_path.read_text() == "model_config_list {\n}\n"


def test_a_warmup_record_that_is_not_a_proto_fails_the_check_in_one_line(version, tmp_path):
    copy = tmp_path / "fm" / "1"
    copy.parent.mkdir()
    subprocess.run(["cp", "-r", str(version), str(copy)], check=True)
    (copy / "assets.extra").mkdir(exist_ok=True)
    with tf.io.TFRecordWriter(str(copy / layout.WARMUP_FILE)) as writer:
        writer.write(b"\xff\xfe not a PredictionLog")
    with c_api.CSavedModel(copy) as saved_model:
        with pytest.raises(layout.ServingCheckError, match=r"record 1 is not a PredictionLog"):
            check.replay_warmup(saved_model, copy)


# --- models.config: a user's entries --------------------------------------------------------------------


def test_a_users_entry_of_the_same_name_is_never_repointed(version, tmp_path):
    config_path = tmp_path / "models.config"
    users = '# the production model\nmodel_config_list {\n  config {\n    name: "fashion_mnist"\n' \
            '    base_path: "/srv/other/fashion_mnist"\n    model_platform: "tensorflow"\n  }\n}\n'  # fmt: skip
    config_path.write_text(users)
    with pytest.raises(layout.ModelConfigError) as error:
        model_config.write_model_config(config_path, version.parent)
    assert str(error.value) == (
        f"{config_path} already lists model fashion_mnist at /srv/other/fashion_mnist, not at this export's "
        f"{version.parent.resolve()}: rename one of the two folders, or remove that entry"
    )
    assert config_path.read_text() == users
    # A run checks this before it trains.
    with pytest.raises(layout.ModelConfigError, match="already lists model fashion_mnist"):
        model_config.read_listable_model_config(config_path, version.parent)


def test_a_config_already_listing_this_export_keeps_the_users_text_byte_for_byte(version, tmp_path):
    config_path = tmp_path / "models.config"
    users = f'# served since May\nmodel_config_list {{ config {{ name: "fashion_mnist" base_path: "{version.parent.resolve()}"' \
            ' model_platform: "tensorflow" } }  # ours\n'  # fmt: skip
    config_path.write_text(users)
    model_config.write_model_config(config_path, version.parent)
    assert config_path.read_text() == users
    other = tmp_path / "other" / "fm_other"
    export.export_saved_model(build_model(), other)
    model_config.write_model_config(config_path, other)  # adding an entry rewrites the file in text_format's layout
    config = text_format.Parse(config_path.read_text(), model_server_config_pb2.ModelServerConfig())
    assert [e.name for e in config.model_config_list.config] == ["fashion_mnist", "fm_other"]


# --- Requests ------------------------------------------------------------------------------------------


def _zlib_bomb_28x28(inflated=1 << 30):
    """A PNG with a valid 28x28 8-bit grayscale header whose IDAT inflates to ``inflated`` bytes (~1 MB for 1 GiB)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    block_bytes = 1 << 20
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes(block_bytes)) + compressor.flush(zlib.Z_FULL_FLUSH)
    idat = b"\x78\xda" + block * (inflated // block_bytes) + zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    ihdr = struct.pack(">IIBBBBB", 28, 28, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat + b"\0\0\0\1") + chunk(b"IEND", b"")


def test_a_zlib_bomb_in_a_valid_28x28_png_is_refused_before_it_is_inflated(signatures):
    bomb = _zlib_bomb_28x28()
    assert len(bomb) < 1_200_000
    # Refused by the size node, which runs before any decode (the decode of this one would inflate 1 GiB).
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(f"png_too_large: serving_png takes PNGs of at "
                       f"most {MAX_PNG_BYTES} bytes; refused (index; bytes):] [[0]] [{len(bomb)}]")):  # fmt: skip
        signatures["serving_png"](png_bytes=tf.constant([bomb]))


def test_an_honest_png_is_far_under_the_cap_and_a_request_has_a_total_cap(signatures, version):
    image = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)  # noise: the worst to compress
    assert len(encode_png(image)) < MAX_PNG_BYTES / 4
    assert signatures["serving_png"](png_bytes=tf.constant([encode_png(image)]))["class_id"].shape == (1,)
    padded = encode_png(image) + b"\0" * (MAX_PNG_BYTES - len(encode_png(image)))
    count = MAX_PNG_REQUEST_BYTES // MAX_PNG_BYTES + 1
    assert count <= MAX_PNG_BATCH
    with pytest.raises(tf.errors.InvalidArgumentError, match="png_request_too_large"):
        signatures["serving_png"](png_bytes=tf.constant([padded] * count))


@pytest.mark.parametrize(
    "signature, inputs",
    [
        ("serving_default", {"images": tf.zeros([MAX_BATCH + 1, 28, 28], tf.uint8)}),
        ("serving_normalized", {"pixels": tf.zeros([MAX_BATCH + 1, 784])}),
    ],
)
def test_every_signature_caps_its_batch(signatures, signature, inputs):
    expected = f"batch_too_large: {signature} takes at most {MAX_BATCH} images a request, got] [{MAX_BATCH + 1}]"
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(expected)):
        signatures[signature](**inputs)
    at_cap = {name: value[: MAX_BATCH] for name, value in inputs.items()}
    assert signatures[signature](**at_cap)["class_id"].shape == (MAX_BATCH,)


@pytest.mark.parametrize(
    "value, expected",
    [
        (np.nan, "pixels_must_be_finite: serving_normalized takes finite pixels in [0, 1]; NaN or inf at (row, column):] [[1 5]]"),
        (np.inf, "pixels_must_be_finite"),
        (-np.inf, "pixels_must_be_finite"),
        (1.5, "pixels_must_be_in_0_to_1: serving_normalized takes pixels in [0, 1] (uint8 / 255); at (row, column), value:] [[1 5]] [1.5]"),
        (-0.01, "pixels_must_be_in_0_to_1"),
    ],
)
def test_serving_normalized_refuses_non_finite_and_out_of_range_pixels(signatures, value, expected):
    pixels = np.full([2, 784], 0.5, np.float32)
    pixels[1, 5] = value
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(expected)):
        signatures["serving_normalized"](pixels=tf.constant(pixels))
    pixels[1, 5] = 1.0  # the ends of the range are accepted
    pixels[0, 0] = 0.0
    assert signatures["serving_normalized"](pixels=tf.constant(pixels))["class_id"].shape == (2,)
