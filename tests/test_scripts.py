"""The scripts run as a user runs them, on the shipped data (a new user's first session: test_cli.py)."""

import json

import matplotlib.image
import pytest

from conftest import run_script


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--epochs=0", "epochs"),
        ("--epochs=abc", "epochs"),
        ("--batch_size=-1", "batch_size"),
        ("--source=csv", "source"),
        ("--raw_dir=/nonexistent", "/nonexistent"),
        ("--export_dir=/proc/fashion_mnist", "/proc/fashion_mnist"),
        ("--learning_rate=-1", "learning_rate"),
        ("--seed=abc", "seed"),
        ("--optimizer=lbfgs", "optimizer"),
    ],
)
def test_bad_flags_stop_with_one_line(tmp_path, flag, message):
    done = run_script("train.py", f"--export_dir={tmp_path / 'm'}", flag)
    assert done.returncode != 0
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], done.stderr
    assert "Epoch" not in done.stdout
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


@pytest.mark.slow
def test_explore_writes_the_grid_and_counts(tmp_path):
    out = tmp_path / "grid.png"
    done = run_script("explore.py", f"--out={out}", "--count=10", "--source=idx")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[9, 0, 0, 3, 0, 2, 7, 2, 5, 5]" in done.stdout
    assert "Ankle boot" in done.stdout and "6000    1000" in done.stdout
    image = matplotlib.image.imread(out)
    assert image.shape[:2] == (380, 800)  # 2 rows x 5 columns of 1.6 x 1.9 inch cells at 100 dpi
    assert image[..., :3].std() > 0.1  # images, not a blank canvas


@pytest.mark.slow
def test_explore_augmented_shows_the_images_and_three_draws(tmp_path):
    out = tmp_path / "augmented.png"
    done = run_script("explore.py", f"--out={out}", "--count=10", "--augmented", "--source=idx")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "3 augmented draws" in done.stdout
    image = matplotlib.image.imread(out)
    assert image.shape[:2] == (760, 1600)  # 4 rows (the images, 3 draws) x 10 columns of 1.6 x 1.9 inch cells
    assert image[..., :3].std() > 0.1


def test_baseline_script_prints_folds_and_writes_json(tmp_path, tfds_dir):
    out = tmp_path / "b.json"
    done = run_script(
        "baseline.py", "--folds=2", "--max_iter=5", "--n_jobs=2", f"--tfds_dir={tfds_dir}", f"--metrics_json={out}"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fold 2: accuracy" in done.stdout and "CV mean accuracy" in done.stdout
    assert done.stdout.count("stopped at max_iter=5") == 1
    figures = json.loads(out.read_text())
    assert set(figures) == {"cv_scores", "cv_mean", "test_accuracy", "seconds"}
    assert figures["cv_mean"] >= 0.75 and figures["test_accuracy"] >= 0.75
