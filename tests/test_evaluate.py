"""The evaluation of an exported SavedModel, checked against figures computed here from the raw test files
and the SavedModel's own predictions."""

import json
import pathlib
import re
import shutil

import matplotlib.image
import numpy as np
import pytest
import tensorflow as tf

from conftest import error_lines, parse_idx, run_script
from fmnist_tf import data, evaluation
from fmnist_tf.serving import client, layout


@pytest.fixture(scope="module")
def exported(one_epoch_run):
    """(base path, version folder, training figures) of a softmax trained one epoch on the real data."""
    folder, figures = one_epoch_run  # conftest's, shared: read only
    return folder / "fashion_mnist", pathlib.Path(figures["export_path"]), figures


@pytest.fixture(scope="module")
def expected(exported):
    """(labels, predictions) in the original files' order: raw files read by NumPy, the SavedModel called directly."""
    _, version, _ = exported
    images_file, labels_file = data.RAW_FILES["test"]
    images = parse_idx(data.DEFAULT_RAW_DIR / images_file)
    labels = parse_idx(data.DEFAULT_RAW_DIR / labels_file).astype(np.int64)
    serve = tf.saved_model.load(str(version)).signatures["serving_default"]
    predictions = np.concatenate(
        [serve(images=tf.constant(images[i : i + 1000]))["class_id"].numpy() for i in range(0, len(images), 1000)]
    )
    return labels, predictions


@pytest.fixture(scope="module")
def reports(exported, tmp_path_factory):
    """Evaluation from the base path and from the version folder: name -> (returned report, out dir)."""
    base, version, _ = exported
    out = tmp_path_factory.mktemp("evaluation")
    return {
        name: (evaluation.evaluate_saved_model(path, out / name, source="idx"), out / name)
        for name, path in (("base", base), ("version", version))
    }


def test_report_matches_figures_computed_from_the_saved_model(reports, expected, exported):
    labels, predictions = expected
    _, version, figures = exported
    matrix = np.zeros((10, 10), np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    diagonal = np.diag(matrix)
    precision, recall = diagonal / matrix.sum(axis=0), diagonal / matrix.sum(axis=1)
    off_diagonal = [(matrix[t, p], t, p) for t in range(10) for p in range(10) if t != p]
    top = sorted(off_diagonal, key=lambda c: (-c[0], c[1], c[2]))[:5]
    for report, out_dir in reports.values():
        assert json.loads((out_dir / "report.json").read_text()) == report
        assert report["model_path"] == str(version) and report["examples"] == 10_000
        assert report["accuracy"] == np.mean(labels == predictions)
        # Training measured the same model through Keras; only a near-tie could flip a prediction.
        assert report["accuracy"] == pytest.approx(figures["test_accuracy"], abs=2e-4)
        np.testing.assert_array_equal(report["confusion_matrix"], matrix)
        assert np.sum(report["confusion_matrix"], axis=1).tolist() == [1000] * 10
        per_class = report["per_class"]
        assert [row["class_name"] for row in per_class] == list(data.CLASS_NAMES)
        assert [row["support"] for row in per_class] == [1000] * 10
        np.testing.assert_allclose([row["recall"] for row in per_class], recall, rtol=1e-12)
        np.testing.assert_allclose([row["precision"] for row in per_class], precision, rtol=1e-12)
        np.testing.assert_allclose(
            [row["f1"] for row in per_class], 2 * precision * recall / (precision + recall), rtol=1e-12
        )
        assert [(c["count"], c["true_id"], c["predicted_id"]) for c in report["most_confused"]] == top
        assert [(c["true"], c["predicted"]) for c in report["most_confused"]] == [
            (data.CLASS_NAMES[t], data.CLASS_NAMES[p]) for _, t, p in top
        ]


def test_pngs_are_written_at_their_size_and_not_blank(reports):
    for _, out_dir in reports.values():
        matrix = matplotlib.image.imread(out_dir / "confusion_matrix.png")[..., :3]
        assert matrix.shape[:2] == (700, 800)  # 8 x 7 inches at 100 dpi
        assert matrix.std() > 0.1
        mistakes = matplotlib.image.imread(out_dir / "mistakes.png")[..., :3]
        assert mistakes.shape[:2] == (760, 800)  # 20 mistakes: 4 rows x 5 columns of 1.6 x 1.9 inch cells
        assert mistakes.std() > 0.1


def test_a_base_path_resolves_to_its_highest_integer_version(exported, tmp_path):
    _, version, _ = exported
    for name in ("2", "10"):
        shutil.copytree(version, tmp_path / name)
    (tmp_path / "99-old").mkdir()  # not all digits: TF Serving ignores it, so must we
    assert layout.resolve_export(tmp_path) == (tmp_path, 10, tmp_path / "10")  # by number, not by name
    assert layout.resolve_export(tmp_path / "2") == (tmp_path, 2, tmp_path / "2")


def test_a_savedmodel_outside_a_version_folder_is_scored_as_any_tf_code_would_load_it(exported, tmp_path):
    _, version, _ = exported
    plain = shutil.copytree(version, tmp_path / "my_model")  # tf.saved_model.save's folder: no version number
    loaded, signature = client.load_serving_default(plain)
    assert loaded == plain and "class_id" in signature.structured_outputs
    with pytest.raises(layout.ModelDirError, match="not a version folder"):
        layout.resolve_export(plain)  # TF Serving would not serve it: the serving check says so


def test_a_path_without_a_saved_model_is_a_clear_error(exported, tmp_path):
    _, version, _ = exported
    not_a_model = tmp_path / "not_a_model"
    (not_a_model / "1").mkdir(parents=True)
    damaged = tmp_path / "damaged"
    shutil.copytree(version, damaged / "3")
    (damaged / "3" / "saved_model.pb").write_bytes(b"not a protobuf")
    cases = [
        (tmp_path / "missing", "does not exist"),
        (tmp_path, "neither a SavedModel"),
        (not_a_model, f"latest version {not_a_model / '1'} holds no saved_model.pb"),
        (damaged, f"{damaged / '3'}: not a loadable SavedModel"),
    ]
    for path, message in cases:
        with pytest.raises(layout.ModelDirError, match=re.escape(message)) as raised:
            evaluation.evaluate_saved_model(path, tmp_path / "out", source="idx")
        assert str(path) in str(raised.value) and "\n" not in str(raised.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_script_prints_the_summary_and_writes_the_files(exported, expected, tmp_path):
    base, version, _ = exported
    labels, predictions = expected
    done = run_script("evaluate.py", f"--model_dir={base}", f"--out_dir={tmp_path}", "--source=idx")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"model {version}: test accuracy {np.mean(labels == predictions):.4f} on 10000 images" in done.stdout
    for name in data.CLASS_NAMES:
        assert f"\n{name:<12}" in done.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    top = report["most_confused"][0]
    assert f"most confused (true -> predicted):\n  {top['true']} -> {top['predicted']}: {top['count']}" in done.stdout
    assert f"to {tmp_path}" in done.stdout
    assert (tmp_path / "confusion_matrix.png").is_file() and (tmp_path / "mistakes.png").is_file()
    # The version's provenance (assets.extra/fmnist_tf.json), as JSON after the summary.
    provenance = json.loads(done.stdout.split("provenance of this version:\n", 1)[1])
    assert provenance["model"] == "softmax"
    assert provenance["figures"]["test_accuracy"] == pytest.approx(np.mean(labels == predictions), abs=2e-4)


@pytest.mark.slow
def test_script_with_a_bad_model_dir_stops_with_one_line(tmp_path):
    nowhere, out = tmp_path / "nowhere", tmp_path / "out"
    done = run_script("evaluate.py", f"--model_dir={nowhere}", f"--out_dir={out}", "--source=idx")
    assert done.returncode != 0
    lines = error_lines(done)
    assert len(lines) == 1 and lines[0].startswith("error:") and str(nowhere) in lines[0], done.stderr
    assert done.stdout == "" and not out.exists()


def test_compare_reports_puts_recall_and_the_most_confused_pairs_side_by_side():
    labels = np.repeat(np.arange(10), 10)
    ours, theirs = labels.copy(), labels.copy()
    ours[:3] = 6  # 3 T-shirts taken for shirts
    theirs[:5], theirs[20:22] = 6, 4  # 5 T-shirts for shirts, 2 pullovers for coats
    comparison = evaluation.compare_reports(evaluation.metrics_report(labels, ours),
                                            evaluation.metrics_report(labels, theirs))  # fmt: skip
    assert (comparison["accuracy"], comparison["other_accuracy"]) == (0.97, 0.93)
    assert comparison["recall"][0] == {"class_name": "T-shirt/top", "recall": 0.7, "other_recall": 0.5}
    assert comparison["recall"][2] == {"class_name": "Pullover", "recall": 1.0, "other_recall": 0.8}
    assert comparison["most_confused"] == [
        {"true": "T-shirt/top", "predicted": "Shirt", "count": 3, "other_count": 5},
        {"true": "Pullover", "predicted": "Coat", "count": 0, "other_count": 2},
    ]


def test_evaluate_compare_to_prints_both_and_refuses_a_file_that_is_no_report(exported, reports, tmp_path):
    base, _, _ = exported
    other = reports["version"][1] / "report.json"
    done = run_script("evaluate.py", f"--model_dir={base}", f"--out_dir={tmp_path / 'a'}", f"--compare_to={other}",
                      "--source=idx")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"compared to {other}: test accuracy" in done.stdout
    # The same model on both sides: every recall unchanged, each pair's counts equal.
    rows = re.findall(r"^(\S.{11})\s*(\d\.\d{4})\s+(\d\.\d{4})\s+([+-]\d\.\d{4})$", done.stdout, re.M)
    assert len(rows) == 10 and all(row[1] == row[2] and float(row[3]) == 0 for row in rows)
    pairs = re.findall(r"^  \S.* -> .*\s(\d+)\s+(\d+)$", done.stdout, re.M)
    assert pairs and all(a == b for a, b in pairs)
    not_a_report = tmp_path / "m.json"
    not_a_report.write_text('{"accuracy": 0.9}')
    bad = run_script("evaluate.py", f"--model_dir={base}", f"--out_dir={tmp_path / 'b'}",
                     f"--compare_to={not_a_report}", "--source=idx")  # fmt: skip
    assert bad.returncode == 1 and error_lines(bad) == [
        f"error: {not_a_report} is not a report.json of evaluate.py: no per_class rows or confusion_matrix"
    ]
    assert not (tmp_path / "b").exists()
