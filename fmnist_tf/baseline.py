"""The scikit-learn baseline of the notebook: logistic regression by SGD on pixels/255, k-fold CV."""

import contextlib
import time
import warnings

import joblib
import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import SGDClassifier
from sklearn.model_selection import cross_validate

from fmnist_tf import data


def load_baseline_arrays(source="tfds", raw_dir=data.DEFAULT_RAW_DIR, tfds_dir=None):
    """((x_train, y_train), (x_test, y_test)): float64 [n, 784] pixels / 255 and int64 labels.

    The notebook's arrays exactly: in the original files' order (k-fold CV scores depend on it) and in
    float64, as NumPy's ``uint8 / 255.0`` gives them (scikit-learn's SGD also runs in float32, which moved
    the CV scores by up to 4e-4). Not ``data.normalize``: that is the float32 of the TF pipelines.
    """
    arrays = []
    for split in ("train", "test"):
        images, labels = data.load_arrays_in_file_order(split, source, raw_dir, tfds_dir)
        arrays.append((images.reshape(len(images), -1) / 255.0, labels))
    return tuple(arrays)


def make_classifier(max_iter=10, seed=42):
    """The notebook's estimator: SGDClassifier(loss="log_loss", max_iter=10, random_state=42)."""
    return SGDClassifier(loss="log_loss", max_iter=max_iter, random_state=seed)


@contextlib.contextmanager
def expected_convergence_warnings():
    """Silence sklearn's ConvergenceWarning: at the notebook's max_iter=10 every fit stops early, by design.

    Callers report it once instead (``run_baseline``'s ``not_converged``).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def cross_validate_baseline(x, y, folds=5, max_iter=10, seed=42, n_jobs=-1):
    """k-fold ``cross_validate`` of the notebook's estimator; figures plus the fitted estimators.

    Folds run on threads, not loky processes: SGD's epochs run without the GIL, threads share the pixels
    instead of copying them into each worker, and with ``n_jobs=-1`` every fold gets a thread, so 5 folds
    keep 2 cores busy to the end instead of leaving one idle in a third round (BUILD_NOTES.md has the figures).
    """
    start = time.perf_counter()
    threads = folds if n_jobs == -1 else n_jobs
    with expected_convergence_warnings(), joblib.parallel_backend("threading", n_jobs=threads):
        cv = cross_validate(make_classifier(max_iter, seed), x, y, cv=folds, n_jobs=threads, return_estimator=True)
    return {
        "cv_scores": [float(s) for s in cv["test_score"]],
        "cv_mean": float(np.mean(cv["test_score"])),
        "cv_seconds": time.perf_counter() - start,
        "estimators": list(cv["estimator"]),
    }


def run_baseline(train, test, folds=5, max_iter=10, seed=42, n_jobs=-1):
    """Cross-validate on ``train``, then fit on all of it and score ``test``; return a dict of figures.

    ``not_converged`` counts the fits that stopped at max_iter: at the notebook's max_iter=10 that is
    expected, and callers report it once instead of one ConvergenceWarning per fold.
    """
    (x_train, y_train), (x_test, y_test) = train, test
    start = time.perf_counter()
    cv = cross_validate_baseline(x_train, y_train, folds, max_iter, seed, n_jobs)
    with expected_convergence_warnings():
        final = make_classifier(max_iter, seed).fit(x_train, y_train)
    fitted = [*cv.pop("estimators"), final]
    return {
        **cv,
        "test_accuracy": float(final.score(x_test, y_test)),
        "seconds": time.perf_counter() - start,
        "not_converged": sum(int(est.n_iter_ >= max_iter) for est in fitted),
        "fits": len(fitted),
    }
