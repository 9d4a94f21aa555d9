"""A normal (non-editable) install works: the wheel is built, installed into a fresh venv and run from
another folder with an empty HOME, as a user would after `pip install .`.

What this proves: the wheel carries the package and the four shipped Fashion-MNIST files (byte-identical,
with their licence); its console scripts and `python -m fmnist_tf.cli.<job>` run from any folder, offline,
and write their outputs under that folder. The fresh venv sees the project venv's dependencies through a
.pth line (so nothing is downloaded), but fmnist_tf itself comes only from the wheel: the project venv's
editable hook lives in a .pth file that Python does not read from a folder added that way, and the test
checks where fmnist_tf was imported from.
"""

import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from conftest import REPO

pytestmark = [pytest.mark.install, pytest.mark.slow]

DATA = "fmnist_tf/data/fashion-mnist/"
# What `pip wheel .` reads from a clone: the build config, the long description and the package.
BUILD_INPUTS = ("pyproject.toml", "setup.cfg", "README.md", "fmnist_tf")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel built from a copy of the checkout's build inputs (the checkout gets no build/ or egg-info)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    source.mkdir()
    for name in BUILD_INPUTS:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    # This venv's setuptools and wheel, checked against pyproject.toml's build requirements: no download.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--check-build-dependencies",
         "--quiet", "--wheel-dir", str(root / "dist"), str(source)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    (path,) = (root / "dist").glob("fmnist_tf-*.whl")
    return path


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory):
    """bin/ of a fresh venv with the wheel installed, the project venv's packages visible for its dependencies."""
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    # A folder named in a .pth joins sys.path; its own .pth files (the editable hook's) are not read.
    (pathlib.Path(purelib) / "project-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [python, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", str(wheel)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return root / "bin"


def test_the_wheel_carries_the_shipped_files_byte_identical_with_their_licence(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        sums = dict(line.split()[::-1] for line in archive.read(DATA + "SHA256SUMS").decode().splitlines())
        assert set(sums) == {
            "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
        }  # fmt: skip
        for name, digest in sums.items():
            assert hashlib.sha256(archive.read(DATA + name)).hexdigest() == digest, name
            assert archive.read(DATA + name) == (REPO / DATA / name).read_bytes(), name
        assert "MIT" in archive.read(DATA + "LICENSE").decode() and "Zalando" in archive.read(DATA + "LICENSE").decode()
        entry_points = archive.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "fmnist-train = fmnist_tf.cli.train:run" in entry_points
    assert not any(name.startswith(("tests/", "scripts/", "saved_models/")) for name in names)


def test_installed_commands_run_from_any_folder_and_write_under_it(venv, tmp_path):
    home, cwd = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    cwd.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(home)}

    def run(*command):
        return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)

    where = run(str(venv / "python"), "-c", "import fmnist_tf.data as d; print(d.__file__); print(d.DEFAULT_RAW_DIR)")
    package, raw_dir = where.stdout.split()
    assert package.startswith(str(venv.parent)) and raw_dir.startswith(str(venv.parent)), where.stdout

    trained = run(str(venv / "fmnist-train"), "--epochs=1", "--source=idx")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert trained.stderr == ""
    assert "exported saved_models/fashion_mnist/1" in trained.stdout
    assert (cwd / "saved_models" / "fashion_mnist" / "1" / "saved_model.pb").is_file()
    assert (cwd / "saved_models" / "models.config").is_file()

    # The module door, with the defaults: the latest version of ./saved_models/fashion_mnist, report beside it.
    evaluated = run(str(venv / "python"), "-m", "fmnist_tf.cli.evaluate", "--source=idx")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert evaluated.stderr == ""
    assert "wrote report.json, confusion_matrix.png, mistakes.png to reports/fashion_mnist/1" in evaluated.stdout
    assert (cwd / "reports" / "fashion_mnist" / "1" / "report.json").is_file()
    assert sorted(p.name for p in cwd.iterdir()) == ["reports", "saved_models"]


def test_ci_runs_the_readmes_test_command():
    readme = (REPO / "README.md").read_text()
    command = readme.split("Install and run the whole test suite", 1)[1].split("```sh\n", 1)[1].split("\n```", 1)[0]
    steps = [step.strip() for step in command.split("&&")]
    assert len(steps) == 3 and steps[-1] == ".venv/bin/python -m pytest", command
    ci = [line.removeprefix("exec ") for line in (REPO / ".ci" / "run").read_text().splitlines()]
    found = [next((i for i, line in enumerate(ci) if line.startswith(step)), None) for step in steps]
    assert None not in found and found == sorted(found), (steps, ci)
