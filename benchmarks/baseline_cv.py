"""The baseline's cross-validation: the notebook's ``cross_validate`` call against ``scripts/baseline.py``'s path."""

import time

from fmnist_tf import baseline


def bench_baseline(source="idx", tfds_dir=None):
    """The notebook's cross_validate call against scripts/baseline.py's path: seconds and scores."""
    from sklearn.model_selection import cross_validate

    train, test = baseline.load_baseline_arrays(source, tfds_dir=tfds_dir)
    start = time.perf_counter()
    with baseline.expected_convergence_warnings():
        notebook = cross_validate(baseline.make_classifier(), *train, cv=5, n_jobs=-1)
    notebook_seconds = time.perf_counter() - start
    package = baseline.cross_validate_baseline(*train)
    return {
        "baseline_notebook_seconds": notebook_seconds,
        "baseline_package_seconds": package["cv_seconds"],
        "baseline_speedup": notebook_seconds / package["cv_seconds"],
        "baseline_notebook_cv_scores": [float(s) for s in notebook["test_score"]],
        "baseline_package_cv_scores": package["cv_scores"],
    }
