import gzip

import pytest
import numpy as np

from fmnist_tf import baseline, data


def test_arrays_are_the_notebooks_float64_pixels_in_the_original_file_order():
    (x_train, y_train), (x_test, y_test) = baseline.load_baseline_arrays(source="idx")
    assert x_train.shape == (60_000, 784) and x_test.shape == (10_000, 784)
    # The notebook's X_train / 255. on the file's own bytes, read here without the package.
    raw = gzip.open(data.DEFAULT_RAW_DIR / "t10k-images-idx3-ubyte.gz").read()
    np.testing.assert_array_equal(x_test, np.frombuffer(raw[16:], np.uint8).reshape(-1, 784) / 255.0)
    assert x_train.dtype == np.float64 and 0.0 == x_train.min() and x_train.max() == 1.0
    # The first ten training labels of Zalando's file.
    assert y_train[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]


@pytest.mark.slow
def test_cross_validation_on_real_data_beats_a_floor():
    (x_train, y_train), (x_test, y_test) = baseline.load_baseline_arrays(source="idx")
    figures = baseline.run_baseline(
        (x_train[:10_000], y_train[:10_000]), (x_test, y_test), folds=3, max_iter=5, n_jobs=1
    )
    assert len(figures["cv_scores"]) == 3
    assert all(0.72 <= s <= 0.9 for s in figures["cv_scores"]), figures["cv_scores"]
    assert figures["cv_mean"] == np.mean(figures["cv_scores"])
    assert 0.72 <= figures["test_accuracy"] <= 0.9
    assert figures["not_converged"] == figures["fits"] == 4
