"""The command-line jobs as a new user meets them: flags answer before TensorFlow loads; in a fresh HOME
the first run builds TFDS in one line; a clean run, a resumed run and evaluate.py (with no flags) print
nothing on stderr; the strategy line comes before the first epoch."""

import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, planned_strategy, run_script
from fmnist_tf import configs, training
from fmnist_tf.cli import startup

# Every door, and the benchmark's main: a checkout's script, not installed, whose flags answer the same way.
DOORS = [*sorted(f"scripts/{path.name}" for path in (REPO / "scripts").glob("*.py")), "benchmarks/run.py"]
FLAG_LINE = re.compile(r"^  (?:-\S,)?--(?:\[no\])?(\w+):")


def _imported_modules(stderr):
    """Top-level names of the modules a `python -X importtime` run imported."""
    return {line.split("|")[-1].strip().split(".")[0] for line in stderr.splitlines() if line.startswith("import time:")}


def _help_sections(stdout):
    """absl help text -> {section name: [flag names]}, in order, from the "flags:" line on."""
    sections, current = {}, None
    for line in stdout.split("\nflags:\n", 1)[1].splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            current = sections.setdefault(line[:-1], [])
        elif (match := FLAG_LINE.match(line)) and current is not None:
            current.append(match.group(1))
    return sections


@pytest.mark.parametrize("door", DOORS)
def test_help_and_bad_flags_answer_before_tensorflow_under_the_doors_name(door, tmp_path):
    script = str(REPO / door)
    answers = {}
    for arg in ("--help", "--helpfull", "--no_such_flag"):
        answers[arg] = subprocess.run(
            [sys.executable, "-X", "importtime", script, arg], capture_output=True, text=True, cwd=tmp_path, timeout=60
        )
        imported = _imported_modules(answers[arg].stderr)
        assert "absl" in imported and not imported & {"tensorflow", "keras", "tensorflow_datasets"}, arg
    short, full, bad = answers["--help"], answers["--helpfull"], answers["--no_such_flag"]
    # absl's help flags exit with status 1, before main.
    assert short.returncode == full.returncode == bad.returncode == 1
    own = _help_sections(short.stdout)
    assert list(own) == [script] and own[script], short.stdout
    # --helpfull: the door's flags first (the shared data flags among them), under the door's name.
    sections = _help_sections(full.stdout)
    assert list(sections)[0] == script and sorted(sections[script]) == sorted(own[script])
    assert not [name for name in sections if name.startswith("fmnist_tf")], list(sections)
    errors = [line for line in bad.stderr.splitlines() if not line.startswith("import time:")]
    assert errors == ["error: Unknown command line flag 'no_such_flag'"]


def test_a_raw_dir_that_is_not_a_folder_is_answered_before_tensorflow(tmp_path):
    script = str(REPO / "scripts" / "train.py")
    done = subprocess.run([sys.executable, "-X", "importtime", script, f"--raw_dir={tmp_path / 'nowhere'}"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)  # fmt: skip
    assert done.returncode == 1
    assert not _imported_modules(done.stderr) & {"tensorflow", "keras", "tensorflow_datasets"}
    errors = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
    nowhere = tmp_path / "nowhere"
    assert errors == [f"error: flag --raw_dir={nowhere}: raw_dir {nowhere} does not exist or is not a folder"]


def test_train_help_says_each_models_defaults(tmp_path):
    done = run_script("train.py", "--help", cwd=tmp_path, timeout=60)
    text = " ".join(done.stdout.split())
    for name, d in configs.MODEL_DEFAULTS.items():
        assert f"{name}: {d.optimizer}, batch {d.batch_size}, {d.epochs} epochs" in text
    assert "default saved_models/fashion_mnist for softmax" in text


def test_train_has_a_flag_for_each_config_field_and_fills_the_config_from_them(tmp_path):
    done = run_script("train.py", "--help", cwd=tmp_path, timeout=60)
    (own,) = _help_sections(done.stdout).values()
    fields = {field.name for field in dataclasses.fields(training.Config)}
    # verbose is the library's (the job always prints); metrics_json is the job's output, not the run's.
    assert fields - set(own) == {"verbose"} and set(own) - fields == {"metrics_json"}, own


def test_each_model_kind_defaults_to_the_settings_behind_its_documented_accuracy():
    # softmax: the notebook's; mlp, cnn and cnn_bn: the commands of BUILD_NOTES.md's 0.8898, 0.9166 and 0.93 rows.
    documented = {
        "softmax": ("rmsprop", 32, 5, False, 1.0),
        "mlp": ("adam", 128, 30, False, 1.0),
        "cnn": ("adam", 64, 10, False, 1.0),
        "cnn_bn": ("adam", 128, 28, True, 0.89),
    }
    assert set(documented) == set(configs.MODELS)
    for name, settings in documented.items():
        config = training.Config(model=name)
        assert (config.optimizer, config.batch_size, config.epochs, config.augment,
                config.learning_rate_decay) == settings, name  # fmt: skip
        assert config.threads == configs.MODEL_DEFAULTS[name].threads
        assert config.export_dir == configs.default_export_dir(name)


@pytest.mark.slow
def test_model_flag_alone_takes_the_models_defaults_and_an_explicit_flag_wins(tmp_path):
    done = run_script("train.py", "--model=mlp", "--epochs=1", "--source=idx", "--metrics_json=m.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((tmp_path / "m.json").read_text())["config"]
    mlp = configs.MODEL_DEFAULTS["mlp"]
    assert (config["optimizer"], config["batch_size"], config["threads"], config["epochs"]) == (
        mlp.optimizer, mlp.batch_size, mlp.threads, 1)  # fmt: skip
    steps = -(-48_000 // mlp.batch_size)  # the model's batch size is the one used
    assert f"Epoch 1/1\n{steps}/{steps} - " in done.stdout
    assert (tmp_path / "saved_models" / "fashion_mnist_mlp" / "1" / "saved_model.pb").is_file()


def test_augment_and_learning_rate_decay_are_checked_and_an_explicit_value_wins():
    assert training.Config(model="cnn_bn", augment=False).augment is False
    assert training.Config(model="softmax", augment=True).augment is True
    with pytest.raises(ValueError, match="augment must be True or False, got 'yes'"):
        training.Config(augment="yes").validate()
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="learning_rate_decay must be in"):
            training.Config(learning_rate_decay=bad).validate()


@pytest.mark.slow
def test_augment_and_decay_flags_override_the_models_defaults(tmp_path):
    done = run_script("train.py", "--augment", "--learning_rate_decay=0.5", "--epochs=1", "--source=idx",
                      "--export_dir=", "--metrics_json=m.json", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((tmp_path / "m.json").read_text())["config"]
    assert (config["augment"], config["learning_rate_decay"]) == (True, 0.5)  # softmax's defaults: off, 1.0


@pytest.fixture(scope="module")
def user(first_user):
    """A new user's session in a fresh HOME, from an empty folder: conftest's first run (1 epoch; it built TFDS's
    fashion_mnist in ~/tensorflow_datasets after an attempt killed mid-build), then train on to 2 epochs
    (resumes), evaluate with no flags."""
    home, cwd = first_user.home, first_user.cwd
    env = {"PATH": os.environ["PATH"], "HOME": str(home)}
    runs = {"first": first_user.first}
    version_1 = cwd / "saved_models" / "fashion_mnist" / "1"
    before = {p.relative_to(version_1): p.stat().st_mtime_ns for p in version_1.rglob("*")} if version_1.is_dir() else None
    runs["resumed"] = run_script("train.py", "--epochs=2", "--workdir=run", cwd=cwd, env=env)
    runs["evaluate"] = run_script("evaluate.py", cwd=cwd, env=env)
    return home, cwd, runs, before


@pytest.mark.parametrize("name", ["first", "resumed", "evaluate"])
def test_a_clean_run_prints_nothing_on_stderr(user, name):
    done = user[2][name]
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.splitlines() == []


def test_the_first_run_builds_tfds_in_one_line_then_the_strategy_line_precedes_the_epochs(user):
    home, _, runs, _ = user
    lines = runs["first"].stdout.splitlines()
    data_dir = home / "tensorflow_datasets" / "fashion_mnist" / "3.0.1"
    assert re.fullmatch(
        rf"building TFDS fashion_mnist from the files in \S+/fashion-mnist into {re.escape(str(data_dir))} "
        r"\(once\) \.\.\. \d+\.\d s",
        lines[0],
    ), lines[0]
    assert (data_dir / "dataset_info.json").is_file()
    strategy, _ = planned_strategy()
    assert lines[1].startswith(f"strategy {strategy} on /") and lines[2] == "Epoch 1/1", lines[1:3]
    assert not re.search(r"Download|Dl Completed|Generating|%\|", runs["first"].stdout)
    figures = json.loads((user[1] / "m.json").read_text())
    assert figures["strategy"] == strategy and figures["val_accuracy"] >= 0.8


def test_a_resumed_run_says_so_and_exports_the_next_version(user):
    _, cwd, runs, before = user
    lines = runs["resumed"].stdout.splitlines()
    assert lines[0].startswith(f"strategy {planned_strategy()[0]} on /"), lines[0]
    assert lines[1:3] == ["Resuming from run after epoch 1", "Epoch 2/2"]
    assert not any(line.startswith("building TFDS") for line in lines)
    base = cwd / "saved_models" / "fashion_mnist"
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"]
    assert {p.relative_to(base / "1"): p.stat().st_mtime_ns for p in (base / "1").rglob("*")} == before
    assert (cwd / "saved_models" / "models.config").is_file() and (cwd / "run" / "learning_curves.png").is_file()


def test_evaluate_with_no_flags_scores_the_latest_version_and_reports_beside_it(user):
    _, cwd, runs, _ = user
    out = runs["evaluate"].stdout
    assert out.startswith("model saved_models/fashion_mnist/2: test accuracy ")
    assert "wrote report.json, confusion_matrix.png, mistakes.png to reports/fashion_mnist/2\n" in out
    report = json.loads((cwd / "reports" / "fashion_mnist" / "2" / "report.json").read_text())
    assert report["model_path"] == "saved_models/fashion_mnist/2" and report["examples"] == 10_000
    assert not (cwd / "saved_models" / "fashion_mnist" / "2" / "report.json").exists()


# Lines TF 2.21 wrote to stderr while it started on this machine (no GPU), before absl logging was set up.
TF_STARTUP = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796050687.080189   10402 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
I0000 00:00:1796050687.244166   10402 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use available CPU instructions in performance-critical operations.
To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags.
I0000 00:00:1796050688.113112   10402 port.cc:153] oneDNN custom operations are on. You may see slightly different numerical results due to floating-point round-off errors from different computation orders. To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.
E0000 00:00:1796050710.331669   10402 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)
"""


# Lines TF 2.20 wrote as it started here (TSL's log format), and lines a GPU machine's TF writes at start-up.
TF_220_STARTUP = """\
2026-12-04 23:16:38.858621: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
2026-12-04 23:16:39.221654: I tensorflow/core/platform/cpu_feature_guard.cc:210] This TensorFlow binary is optimized to use available CPU instructions in performance-critical operations.
To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 AVX_VNNI FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags.
"""
GPU_STARTUP = """\
I0000 00:00:1796050688.213112   10402 gpu_device.cc:2020] Created device /job:localhost/replica:0/task:0/device:GPU:0 with 14791 MB memory:  -> device: 0, name: Tesla T4, pci bus id: 0000:00:04.0, compute capability: 7.5
W0000 00:00:1796050688.313112   10402 gpu_device.cc:2344] TensorFlow was not built with CUDA kernel binaries compatible with compute capability 7.5.
"""


def test_start_up_lines_are_dropped_by_their_severity_as_tf_cpp_min_log_level_would():
    other = (
        "E0000 00:00:1796050710.331669   10402 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (999)\n"
        "2026-12-04 23:16:41.481177: E tensorflow/core/framework/op_kernel.cc:1830] something failed\n"
        "/x/numpy/__init__.py:1: UserWarning: something else\n"
    )
    everything = TF_STARTUP + TF_220_STARTUP + GPU_STARTUP + other
    assert startup.without_noise(everything, startup.startup_noise(2)) == other
    assert startup.without_noise(everything, startup.startup_noise(0)) == everything  # the user asked for all
    assert startup.without_noise(everything, startup.startup_noise(3)) == other.splitlines(keepends=True)[-1]
    # Level 1 hides info only: the warning of a GPU machine is kept.
    assert startup.without_noise(GPU_STARTUP, startup.startup_noise(1)) == GPU_STARTUP.splitlines(keepends=True)[1]


@pytest.mark.slow
def test_a_tensorflow_that_fails_to_start_is_shown_in_full(tmp_path):
    """A broken install (here a `tensorflow` package whose import fails after its C++ side logged) is not hidden."""
    broken = tmp_path / "broken" / "tensorflow"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text(
        "import os\n"
        f"os.write(2, {TF_STARTUP.encode()!r})\n"
        "raise ImportError('libtensorflow_framework.so.2: cannot open shared object file')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(broken.parent))
    done = run_script("train.py", "--epochs=1", "--source=idx", "--export_dir=", cwd=tmp_path, env=env, timeout=60)
    assert done.returncode != 0
    assert TF_STARTUP in done.stderr
    assert done.stderr.rstrip().endswith("ImportError: libtensorflow_framework.so.2: cannot open shared object file")
