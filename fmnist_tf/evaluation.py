"""Score an exported SavedModel on the 10,000 test images, the way a TF Serving client sees it.

The model is loaded with ``tf.saved_model.load`` and called through its ``serving_default`` signature,
never through this package's Keras code: the report describes the artifact that is served.
A LiteRT model (a ``.tflite`` file, see ``lite``) is scored the same way through the LiteRT interpreter.
"""

import json
import os
import pathlib

import numpy as np
import tensorflow as tf
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from fmnist_tf import data, plots, storage
from fmnist_tf.serving.client import load_serving_default, predict_classes

REPORT_FILE = "report.json"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
MISTAKES_FILE = "mistakes.png"
TOP_CONFUSED = 5
LITE_SUFFIX = ".tflite"


def metrics_report(labels, predictions):
    """Accuracy, per-class precision/recall/F1/support, confusion matrix and most-confused pairs, as a dict.

    Confusion matrix rows are true classes and columns predicted ones, in ``data.CLASS_NAMES`` order.
    """
    classes = list(range(data.NUM_CLASSES))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=classes, zero_division=0
    )
    matrix = confusion_matrix(labels, predictions, labels=classes)
    confusions = [(int(matrix[t, p]), t, p) for t in classes for p in classes if t != p and matrix[t, p]]
    # Highest count first; ties in class order, so the list is the same on every run.
    confusions.sort(key=lambda c: (-c[0], c[1], c[2]))
    return {
        "examples": len(labels),
        "accuracy": float(np.mean(np.asarray(labels) == np.asarray(predictions))),
        "per_class": [
            {
                "class_id": i,
                "class_name": data.CLASS_NAMES[i],
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i in classes
        ],
        "confusion_matrix": matrix.tolist(),
        "most_confused": [
            {
                "true_id": t,
                "true": data.CLASS_NAMES[t],
                "predicted_id": p,
                "predicted": data.CLASS_NAMES[p],
                "count": count,
            }
            for count, t, p in confusions[:TOP_CONFUSED]
        ],
    }


def save_mistakes(path, images, labels, predictions, count):
    """A grid of the first ``count`` misclassified ``images``, each titled with its true and predicted class."""
    wrong = np.flatnonzero(labels != predictions)[:count]
    titles = [
        f"true: {data.CLASS_NAMES[labels[i]]}\npred: {data.CLASS_NAMES[predictions[i]]}" for i in wrong
    ]
    return plots.save_image_grid(path, images[wrong], labels[wrong], titles=titles)


def evaluate_saved_model(model_dir, out_dir, source="tfds", raw_dir=data.DEFAULT_RAW_DIR, tfds_dir=None, mistakes=20):
    """Score the SavedModel at ``model_dir`` (a version folder or a base path) on the test split.

    Writes ``out_dir``/report.json, confusion_matrix.png and mistakes.png (the first ``mistakes``
    misclassified test images); returns the report dict, which also names the version folder scored
    ("model_path").
    """
    version, signature = load_serving_default(model_dir)
    images, labels = data.load_arrays("test", source, raw_dir, tfds_dir)
    predictions = predict_classes(signature, images)
    return write_report(out_dir, version, images, labels, predictions, mistakes)


def evaluate_lite_model(path, out_dir, source="tfds", raw_dir=data.DEFAULT_RAW_DIR, tfds_dir=None, mistakes=20):
    """Score the LiteRT model at ``path`` (a .tflite file) through the LiteRT interpreter, as
    ``evaluate_saved_model`` scores an export: the same files and report dict."""
    from fmnist_tf.serving import lite  # the LiteRT interpreter: only a .tflite needs it

    runner = lite.load_lite_model(path)
    images, labels = data.load_arrays("test", source, raw_dir, tfds_dir)
    predictions = lite.predict_lite_classes(runner, images)
    return write_report(out_dir, path, images, labels, predictions, mistakes)


def evaluate_model(path, out_dir, source="tfds", raw_dir=data.DEFAULT_RAW_DIR, tfds_dir=None, mistakes=20):
    """``evaluate_lite_model`` for a path ending in .tflite, else ``evaluate_saved_model``."""
    evaluate = evaluate_lite_model if pathlib.Path(path).suffix == LITE_SUFFIX else evaluate_saved_model
    return evaluate(path, out_dir, source, raw_dir, tfds_dir, mistakes)


def write_report(out_dir, model_path, images, labels, predictions, mistakes):
    """Write report.json, confusion_matrix.png and mistakes.png of ``predictions`` to ``out_dir``; return the report."""
    report = {"model_path": str(model_path), **metrics_report(labels, predictions)}
    # Through TF's file layer: ``out_dir`` may be a local folder or a gs://, s3:// or ram:// URL.
    out_dir = str(out_dir)
    tf.io.gfile.makedirs(out_dir)
    storage.write_json(os.path.join(out_dir, REPORT_FILE), report)
    plots.save_confusion_matrix(os.path.join(out_dir, CONFUSION_MATRIX_FILE), report["confusion_matrix"])
    save_mistakes(os.path.join(out_dir, MISTAKES_FILE), images, labels, predictions, mistakes)
    return report


class ReportError(ValueError):
    """A file given as a report to compare with is not a report.json of ``write_report``."""


def read_report(path):
    """The report ``write_report`` wrote to ``path`` (a report.json), checked for what a comparison reads."""
    try:
        with tf.io.gfile.GFile(str(path)) as f:
            report = json.load(f)
    except (tf.errors.NotFoundError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ReportError(f"cannot read the report {path}: {str(e).splitlines()[0]}") from e
    report = report if isinstance(report, dict) else {}
    rows, matrix = report.get("per_class") or [], report.get("confusion_matrix")
    if len(rows) != data.NUM_CLASSES or np.shape(matrix) != (data.NUM_CLASSES,) * 2 or "most_confused" not in report:
        raise ReportError(f"{path} is not a report.json of evaluate.py: no per_class rows or confusion_matrix")
    return report


def compare_reports(report, other):
    """``report`` beside ``other`` (two reports of ``metrics_report``): per-class recall, and the pairs most
    confused by either (each one's top pairs), with both counts, this report's highest first."""
    recall = [
        {"class_name": row["class_name"], "recall": row["recall"], "other_recall": other_row["recall"]}
        for row, other_row in zip(report["per_class"], other["per_class"])
    ]
    pairs = {(p["true_id"], p["predicted_id"]) for r in (report, other) for p in r["most_confused"]}
    counts = [(report["confusion_matrix"][t][p], other["confusion_matrix"][t][p], t, p) for t, p in pairs]
    counts.sort(key=lambda c: (-c[0], -c[1], c[2], c[3]))
    confused = [
        {"true": data.CLASS_NAMES[t], "predicted": data.CLASS_NAMES[p], "count": count, "other_count": other_count}
        for count, other_count, t, p in counts
    ]
    return {"accuracy": report["accuracy"], "other_accuracy": other["accuracy"], "recall": recall,
            "most_confused": confused}  # fmt: skip
