import matplotlib.image
import numpy as np
import pytest

from fmnist_tf import plots


def _pixels(path):
    return matplotlib.image.imread(path)[..., :3]


def test_learning_curves_have_two_panels_of_the_history(tmp_path):
    history = {
        "loss": [0.6, 0.4, 0.3],
        "accuracy": [0.8, 0.86, 0.88],
        "val_loss": [0.45, 0.4, 0.38],
        "val_accuracy": [0.84, 0.86, 0.87],
    }
    path = plots.save_learning_curves(tmp_path / "curves.png", history)
    image = _pixels(path)
    assert image.shape[:2] == (400, 1000)  # 10 x 4 inches at 100 dpi
    assert image.std() > 0.05
    # Each panel's lines are drawn in colour: matplotlib's default blue (train) and orange (validation).
    left, right = image[:, :500], image[:, 500:]
    for panel in (left, right):
        blue = (panel[..., 2] > 0.6) & (panel[..., 0] < 0.3)
        orange = (panel[..., 0] > 0.9) & (panel[..., 2] < 0.2)
        assert blue.sum() > 100 and orange.sum() > 100


def test_confusion_matrix_is_drawn_with_its_counts(tmp_path):
    matrix = np.diag(np.full(10, 900)) + 10
    path = plots.save_confusion_matrix(tmp_path / "cm.png", matrix)
    image = _pixels(path)
    assert image.shape[:2] == (700, 800)  # 8 x 7 inches at 100 dpi
    # The diagonal's large counts are dark cells, the off-diagonal small ones nearly white.
    dark = image.mean(axis=-1) < 0.3
    assert dark.sum() > 10 * 30 * 30


def test_confusion_matrix_must_be_ten_by_ten(tmp_path):
    with pytest.raises(ValueError, match="10x10"):
        plots.save_confusion_matrix(tmp_path / "cm.png", np.zeros((3, 3), int))
    assert not (tmp_path / "cm.png").exists()


@pytest.mark.parametrize("epochs", [1, 2, 5])
def test_learning_curves_tick_whole_epochs_only(tmp_path, monkeypatch, epochs):
    drawn = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: save(drawn.append(fig) or fig, path))
    keys = ("loss", "accuracy", "val_loss", "val_accuracy")
    plots.save_learning_curves(tmp_path / "curves.png", {k: [0.5] * epochs for k in keys})
    for ax in drawn[0].axes:
        low, high = ax.get_xlim()
        shown = [t for t in ax.get_xticks() if low <= t <= high]
        assert shown == list(range(1, epochs + 1))
