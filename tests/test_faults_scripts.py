"""The doors' faults as a user meets them: outputs checked before any work, bounded flags, TensorFlow's own errors
in one line, a read-only workdir."""


import pytest

from conftest import error_lines, run_script, tmpfs
from fmnist_tf.serving import export, layout
from fmnist_tf.training.workdir import Workdir, WorkdirError
from fmnist_tf.model import build_model

pytestmark = pytest.mark.slow  # every test runs the jobs in subprocesses


@pytest.mark.parametrize("where", ["/proc/nope/m.json", "folder"])
def test_a_bad_metrics_json_stops_train_before_any_work(tmp_path, where):
    (tmp_path / "folder").mkdir()
    done = run_script("train.py", "--source=idx", "--export_dir=fm", f"--metrics_json={where}", cwd=tmp_path)
    assert done.returncode == 1 and "Epoch" not in done.stdout
    (line,) = error_lines(done)
    assert line.startswith(f"error: --metrics_json {where} "), line
    assert ("is a folder: name a file" if where == "folder" else "cannot be written: ") in line
    assert layout.version_paths(tmp_path / "fm") == {} and not list(tmp_path.glob("**/*.tmp-*"))


def test_a_bad_metrics_json_stops_export_lite_before_the_conversion(tmp_path):
    done = run_script("export_lite.py", f"--model_dir={tmp_path}", f"--out_dir={tmp_path / 'lite'}",
                      "--metrics_json=/proc/nope/m.json", "--source=idx")  # fmt: skip
    assert done.returncode == 1
    (line,) = error_lines(done)
    assert line.startswith("error: --metrics_json /proc/nope/m.json cannot be written: "), line


def test_threads_are_bounded_by_the_cores_in_one_line(tmp_path):
    done = run_script("train.py", "--threads=100000", cwd=tmp_path)
    assert done.returncode == 1
    (line,) = error_lines(done)
    assert line.startswith("error: flag --threads=100000: 100000 is not an integer in the range [0, "), line


def test_tensorflows_own_errors_are_one_line_with_the_file(tmp_path):
    base = tmp_path / "fm"
    export.export_saved_model(build_model(), base)
    (tmp_path / "report").write_text("a file where the report folder goes")
    done = run_script("evaluate.py", f"--model_dir={base}", f"--out_dir={tmp_path / 'report'}", "--source=idx")
    assert done.returncode == 1
    (line,) = error_lines(done)
    assert line.startswith("error: ") and str(tmp_path / "report") in line, line
    verbose = run_script("evaluate.py", f"--model_dir={base}", f"--out_dir={tmp_path / 'report'}", "--source=idx",
                         "--verbosity=1")  # fmt: skip
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr


def test_a_read_only_workdir_is_one_line(tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=100k") as folder:
        with pytest.raises(WorkdirError) as error:
            with Workdir(folder / "w").lock():
                pass
        assert str(error.value).startswith(f"workdir {folder / 'w'} cannot be written: ")
        assert "Read-only file system" in str(error.value) and str(error.value).endswith("use a writable --workdir")
