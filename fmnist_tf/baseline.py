"""The scikit-learn baseline of the notebook: logistic regression by SGD on pixels/255, k-fold CV."""

import time

import numpy as np
from sklearn.linear_model import SGDClassifier
from sklearn.model_selection import cross_validate

from fmnist_tf import data


def load_arrays(source="tfds", raw_dir=data.DEFAULT_RAW_DIR, tfds_dir=None):
    """((x_train, y_train), (x_test, y_test)): float32 [n, 784] normalized pixels and int64 labels.

    In the original files' order: k-fold CV scores depend on it, and the notebook's 0.831 used it.
    """
    arrays = []
    for split in ("train", "test"):
        images, labels = data.to_numpy(data.load_split(split, source, raw_dir, tfds_dir))
        arrays.append(data.to_file_order(split, data.normalize(images).numpy(), labels))
    return tuple(arrays)


def make_classifier(max_iter=10, seed=42):
    """The notebook's estimator: SGDClassifier(loss="log_loss", max_iter=10, random_state=42)."""
    return SGDClassifier(loss="log_loss", max_iter=max_iter, random_state=seed)


def run_baseline(train, test, folds=5, max_iter=10, seed=42, n_jobs=-1):
    """Cross-validate on ``train``, then fit on all of it and score ``test``; return a dict of figures.

    ``not_converged`` counts the fits that stopped at max_iter: at the notebook's max_iter=10 that is
    expected, and callers report it once instead of one ConvergenceWarning per fold.
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    (x_train, y_train), (x_test, y_test) = train, test
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        cv = cross_validate(
            make_classifier(max_iter, seed), x_train, y_train, cv=folds, n_jobs=n_jobs, return_estimator=True
        )
        cv_seconds = time.perf_counter() - start
        final = make_classifier(max_iter, seed).fit(x_train, y_train)
    fitted = [*cv["estimator"], final]
    return {
        "cv_scores": [float(s) for s in cv["test_score"]],
        "cv_mean": float(np.mean(cv["test_score"])),
        "test_accuracy": float(final.score(x_test, y_test)),
        "cv_seconds": cv_seconds,
        "seconds": time.perf_counter() - start,
        "not_converged": sum(int(est.n_iter_ >= max_iter) for est in fitted),
        "fits": len(fitted),
    }
