"""The experiment runner: one row per method, a content-keyed cache that is never stale, clear errors."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from neuroseg_lite import experiment, synth
from neuroseg_lite._checks import NeurosegInputError
from neuroseg_lite.cache import StaleCacheWarning

SCORES = ["method", "n_slices", "seed", "dice", "precision", "recall", "surface_dice", "key"]


@pytest.fixture(scope="module")
def tiny_volumes():
    train = synth.make_volume(preset="tiny", seed=1)
    test = synth.make_volume(preset="tiny", seed=2)
    return train, test


@pytest.fixture(scope="module")
def other_volumes():
    return synth.make_volume(preset="tiny", seed=3), synth.make_volume(preset="tiny", seed=4)


def _compare(volumes, workdir, **kwargs):
    train, test = volumes
    kwargs = {"n_slices": 2, "seed": 0, "preset": "smoke", "name": "tiny", "device": "cpu", **kwargs}
    return experiment.compare([train.image], [train.labels], test.image, test.labels, train.spacing,
                              workdir=workdir, **kwargs)


def test_compare_returns_one_row_per_method_and_resumes(tiny_volumes, tmp_path):
    train, test = tiny_volumes
    image_before = train.image.copy()
    results = tmp_path / "results.csv"
    table = _compare(tiny_volumes, tmp_path, results_file=results)
    assert list(table["method"]) == list(experiment.METHODS)
    for column in ("dice", "precision", "recall", "iou", "tp", "fp", "fn", "tn", "object_f1", "hd95_um",
                   "surface_dice", "train_2d_seconds", "pseudo_seconds", "train_3d_seconds",
                   "predict_seconds", "total_seconds", "loss_normalization", "key"):
        assert column in table.columns
    assert table[["dice", "precision", "recall"]].apply(lambda c: c.between(0, 1)).all().all()
    assert (table[["tp", "fp", "fn", "tn"]].sum(axis=1) == test.labels.size).all()
    stages = table.set_index("method")[["train_2d_seconds", "pseudo_seconds", "train_3d_seconds", "predict_seconds"]]
    assert (stages["predict_seconds"] > 0).all()
    assert (stages.loc[["2d", "3d_pseudo"], "train_2d_seconds"] > 0).all()
    assert (stages.loc[["3d_sparse", "3d_dense"], ["train_2d_seconds", "pseudo_seconds"]] == 0).all().all()
    assert stages.loc["3d_pseudo", "pseudo_seconds"] > 0 and stages.loc["2d", "train_3d_seconds"] == 0
    assert (stages.loc[["3d_sparse", "3d_pseudo", "3d_dense"], "train_3d_seconds"] > 0).all()
    np.testing.assert_allclose(table["total_seconds"], stages.sum(axis=1), atol=0.03)
    np.testing.assert_array_equal(train.image, image_before)
    dense = table.set_index("method").loc["3d_dense"]
    assert dense["n_slices"] == train.image.shape[0] and dense["annotated_fraction"] == 1.0
    assert len(pd.read_csv(results)) == 4 and table["key"].is_unique
    models = sorted((tmp_path / "models").rglob("*.pt")) + sorted((tmp_path / "models2d").rglob("*.pt"))
    assert len(models) == 4

    # A second call finds every row in the results file and trains nothing.
    mtimes = {p: p.stat().st_mtime_ns for p in models}
    again = _compare(tiny_volumes, tmp_path, results_file=results)
    assert len(again) == 4 and len(pd.read_csv(results)) == 4
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    pd.testing.assert_frame_equal(again.reset_index(drop=True), pd.read_csv(results))


def test_two_data_sets_and_an_edited_preset_share_a_folder_without_sharing_results(
        tiny_volumes, other_volumes, tmp_path):
    """The issue's scenario: a second data set (same name!) and an edited preset in the first one's folder."""
    def run(volumes, workdir, preset="smoke", results_file=None):
        (train, test) = volumes
        data = experiment.prepare_data([train.image], [train.labels], test.image, test.labels, train.spacing,
                                       name="tiny")
        return experiment.sweep(data, n_slices=(2,), seeds=(0,), methods=("2d", "3d_sparse"), preset=preset,
                                workdir=workdir, results_file=results_file, device="cpu")

    shared, results = tmp_path / "shared", tmp_path / "shared" / "results.csv"
    edited = experiment.ExperimentPreset("smoke", train_2d="smoke", train_3d="smoke",
                                         model_3d={"base_channels": 8, "depth": 2}, overrides_3d={"steps": 8})
    in_shared = [run(tiny_volumes, shared, results_file=results), run(other_volumes, shared, results_file=results),
                 run(tiny_volumes, shared, preset=edited, results_file=results)]
    in_fresh = [run(tiny_volumes, tmp_path / "a"), run(other_volumes, tmp_path / "b"),
                run(tiny_volumes, tmp_path / "c", preset=edited)]
    for shared_rows, fresh_rows in zip(in_shared, in_fresh):
        pd.testing.assert_frame_equal(shared_rows[SCORES], fresh_rows[SCORES])
    first, second, third = (rows.set_index("method")["key"] for rows in in_shared)
    assert not set(first) & set(second)
    # The edited preset changed only the 3D budget: its 2D model is the first one's (shared), its 3D one is not.
    assert third["2d"] == first["2d"] and third["3d_sparse"] != first["3d_sparse"]
    assert len(pd.read_csv(results)) == 2 + 2 + 1


def test_a_truncated_or_foreign_cache_file_is_rebuilt_with_a_warning(tiny_volumes, tmp_path):
    train, test = tiny_volumes
    data = experiment.prepare_data([train.image], [train.labels], test.image, test.labels, train.spacing,
                                   name="tiny")
    run = experiment.Run("3d_sparse", n_slices=1)
    pipe = experiment.Pipeline(data, preset="smoke", workdir=tmp_path, device="cpu", progress=False)
    reference = pipe.predict(run)
    (model_file,) = (tmp_path / "models").rglob("*.pt")
    (prediction_file,) = (tmp_path / "predictions").rglob("*.npy")
    model_file.write_bytes(model_file.read_bytes()[:1000])
    prediction_file.write_bytes(prediction_file.read_bytes()[:200])
    again = experiment.Pipeline(data, preset="smoke", workdir=tmp_path, device="cpu", progress=False)
    with pytest.warns(StaleCacheWarning, match="unreadable"):
        rebuilt = again.predict(run)
    np.testing.assert_array_equal(rebuilt, reference)  # deterministic CPU training: the same model again
    assert len(again.timings) == 2  # the model and the prediction were made anew

    record = prediction_file.with_name(prediction_file.name + ".json")
    stored = json.loads(record.read_text())
    record.write_text(json.dumps({**stored, "key": "0" * 64}))
    third = experiment.Pipeline(data, preset="smoke", workdir=tmp_path, device="cpu", progress=False)
    with pytest.warns(StaleCacheWarning, match="other inputs"):
        third.predict(run)
    assert list(third.timings) == [f"predictions/tiny/{run.label}"]


def test_pipeline_reloads_cached_models_and_predicts_raw_stacks(tiny_volumes, tmp_path):
    train, test = tiny_volumes
    data = experiment.prepare_data([train.image], [train.labels], test.image, test.labels, train.spacing,
                                   name="tiny")
    run = experiment.Run("3d_sparse", n_slices=1)
    first = experiment.Pipeline(data, preset="smoke", workdir=tmp_path, device="cpu", progress=False)
    prediction = first.predict(run)
    assert prediction.shape == test.image.shape and prediction.dtype == np.float32
    second = experiment.Pipeline(data, preset="smoke", workdir=tmp_path, device="cpu", progress=False)
    model = second.model_3d(run)
    assert second.timings == {} and model.history["step"]
    assert model.spacing == data.spacing and model.intensity_normalization == data.intensity_normalization
    fresh = second.predict(run, image=test.image)  # raw uint16: the model normalises it itself
    np.testing.assert_allclose(fresh, prediction, atol=2e-3)  # the cached copy is stored as float16


def test_runs_are_canonical_and_sweep_returns_exactly_the_grid(tiny_volumes, tmp_path):
    assert experiment.Run("2d", n_slices=1, lam=0.9) == experiment.Run("2d", n_slices=1)
    runs = experiment.grid(methods=experiment.METHODS, n_slices=(1, 2), seeds=(0,), lams=(0.5, 1.0))
    assert [r.method for r in runs].count("3d_dense") == 1
    assert len(runs) == 2 * (1 + 1 + 2) + 1 and len(set(runs)) == len(runs)
    train, test = tiny_volumes
    data = experiment.prepare_data([train.image], [train.labels], test.image, test.labels, train.spacing,
                                   name="tiny")
    results = tmp_path / "results.csv"
    wide = experiment.sweep(data, n_slices=(1, 2), seeds=(0,), methods=("2d",), preset="smoke",
                            workdir=tmp_path, results_file=results, device="cpu")
    narrow = experiment.sweep(data, n_slices=(2,), seeds=(0,), methods=("2d",), preset="smoke",
                              workdir=tmp_path, results_file=results, device="cpu")
    assert list(wide["n_slices"]) == [1, 2] and list(narrow["n_slices"]) == [2]
    pd.testing.assert_frame_equal(narrow, wide.iloc[[1]].reset_index(drop=True))


def test_results_files_of_earlier_versions_are_read_or_refused(tiny_volumes, tmp_path):
    train, test = tiny_volumes
    data = experiment.prepare_data([train.image], [train.labels], test.image, test.labels, train.spacing,
                                   name="tiny")

    def run(results_file):
        return experiment.sweep(data, n_slices=(1,), seeds=(0,), methods=("2d",), preset="smoke",
                                workdir=tmp_path, results_file=results_file, device="cpu")

    old = tmp_path / "old.csv"
    pd.DataFrame([{"data": "tiny", "method": "2d", "normalization": "none", "dice": 0.5}]).to_csv(old, index=False)
    before = old.read_bytes()
    with pytest.raises(NeurosegInputError, match="without run keys"):
        run(old)
    assert old.read_bytes() == before
    renamed = tmp_path / "renamed.csv"
    table = run(renamed)
    table.rename(columns={"loss_normalization": "normalization"}).to_csv(renamed, index=False)
    again = run(renamed)
    assert list(again["loss_normalization"]) == list(table["loss_normalization"]) == ["none"]
    assert len(pd.read_csv(renamed)) == 1  # the renamed row was recognised by its key, not run again


def test_bad_arguments_are_named(tiny_volumes, tmp_path):
    train, test = tiny_volumes
    args = ([train.image], [train.labels], test.image, test.labels, train.spacing)
    with pytest.raises(NeurosegInputError, match="preset"):
        experiment.compare(*args, n_slices=1, preset="huge", name="x", workdir=tmp_path)
    with pytest.raises(NeurosegInputError, match="lambda"):
        experiment.compare(*args, n_slices=1, lam=-0.1, preset="smoke", name="x", workdir=tmp_path)
    with pytest.raises(NeurosegInputError, match="shape"):
        experiment.compare([train.image], [train.labels[:-1]], test.image, test.labels, train.spacing,
                           n_slices=1, preset="smoke", name="x", workdir=tmp_path)
    with pytest.raises(NeurosegInputError, match="one label volume per image"):
        experiment.compare([train.image], [], test.image, test.labels, train.spacing, n_slices=1,
                           preset="smoke", name="x", workdir=tmp_path)
    with pytest.raises(NeurosegInputError, match="n_slices"):
        experiment.compare(*args, n_slices=0, preset="smoke", name="x", workdir=tmp_path)
    with pytest.raises(TypeError, match="name"):
        experiment.compare(*args, n_slices=1, preset="smoke", workdir=tmp_path)
    with pytest.raises(NeurosegInputError, match="unknown method"):
        experiment.Run("3d")
    with pytest.raises(NeurosegInputError, match="not a 3D method"):
        experiment.Pipeline(experiment.prepare_data(*args, name="x"), preset="smoke",
                            workdir=tmp_path).model_3d(experiment.Run("2d", n_slices=1))


def test_prior_corrected_variant_changes_only_the_2d_probabilities(tiny_volumes, tmp_path):
    from neuroseg_lite import pseudolabel

    train, test = tiny_volumes
    data = experiment.prepare_data([train.image], [train.labels], test.image, test.labels, train.spacing,
                                   name="tiny")
    variant = experiment.preset_variant("smoke", prior_correction=True)
    assert variant.name == "smoke+prior_correction" and experiment.PRESETS["smoke"].prior_correction is False
    pipe = experiment.Pipeline(data, preset=variant, workdir=tmp_path, device="cpu", progress=False)
    prior = pipe.annotated_prior(2)
    truth = [(a.labels[a.annotated].mean()) for a in pipe.sparse_labels(2)]
    assert prior == pytest.approx(truth[0]) and 0 < prior < 0.5
    raw = pseudolabel.predict_2d(pipe.model_2d(n_slices=2), data.test_image, device="cpu")
    corrected = pipe.predict(experiment.Run("2d", n_slices=2), image=data.test_image)
    np.testing.assert_allclose(corrected, pseudolabel.correct_prior(raw, prior=prior), atol=1e-6)
    assert corrected.mean() < raw.mean()
    (pseudo,) = pipe.pseudo_probabilities(n_slices=2)
    raw_pseudo = pseudolabel.predict_2d(pipe.model_2d(n_slices=2), data.train_images[0], device="cpu")
    np.testing.assert_allclose(pseudo, pseudolabel.correct_prior(raw_pseudo, prior=prior), atol=1e-3)
    with pytest.raises(NeurosegInputError, match="unknown ExperimentPreset field"):
        experiment.preset_variant("smoke", prior=True)
    with pytest.raises(NeurosegInputError, match="unknown preset"):
        experiment.Pipeline(data, preset=3, workdir=tmp_path)
    assert pipe.sparse_labels(2) is pipe.sparse_labels(2)  # simulated once, shared by every stage


def test_a_variant_reuses_the_2d_models_it_would_train_identically(tiny_volumes, tmp_path):
    train, test = tiny_volumes
    data = experiment.prepare_data([train.image], [train.labels], test.image, test.labels, train.spacing,
                                   name="tiny")
    base = experiment.Pipeline(data, preset="smoke", workdir=tmp_path, device="cpu", progress=False)
    base.model_2d(n_slices=1)
    variant = experiment.Pipeline(data, preset=experiment.preset_variant("smoke", prior_correction=True),
                                  workdir=tmp_path, device="cpu", progress=False)
    variant.model_2d(n_slices=1)
    assert variant.timings == {}  # loaded, not trained again
    retrained = experiment.Pipeline(data, preset=experiment.preset_variant("smoke", overrides_2d={"steps": 3}),
                                    workdir=tmp_path, device="cpu", progress=False)
    assert retrained.model_2d(n_slices=1).train_config.steps == 3 and len(retrained.timings) == 1
    assert all(c.isalnum() or c in "+-_." for c in retrained.preset.name), retrained.preset.name


def test_synthetic_data_is_regenerated_when_its_record_does_not_match(tmp_path):
    data = experiment.synthetic_data(preset="tiny", seed=0, n_train=1, workdir=tmp_path)
    record = tmp_path / "data" / data.name / "generator.json"
    stored = json.loads(record.read_text())
    record.write_text(json.dumps({**stored, "key": "stale"}))
    np.save(tmp_path / "marker.npy", 0)
    again = experiment.synthetic_data(preset="tiny", seed=0, n_train=1, workdir=tmp_path)
    assert json.loads(record.read_text())["key"] == stored["key"]
    np.testing.assert_array_equal(again.test_image, data.test_image)
    assert dataclasses.asdict(experiment.Run("3d_dense"))["n_slices"] is None


# -- learning curves, stage times, pseudo-label quality ----------------------------------------------------------
def _data_with_val(volumes, val_volume):
    train, test = volumes
    return experiment.prepare_data([train.image], [train.labels], test.image, test.labels, train.spacing,
                                   name="tiny-val", val_image=val_volume.image, val_labels=val_volume.labels)


def test_learning_curves_score_the_validation_volume_without_changing_the_weights(tiny_volumes, other_volumes,
                                                                                  tmp_path):
    data = _data_with_val(tiny_volumes, other_volumes[0])
    curved_preset = experiment.preset_variant("smoke", val_every=6)
    curved = experiment.Pipeline(data, preset=curved_preset, workdir=tmp_path, device="cpu", progress=False)
    plain = experiment.Pipeline(data, preset="smoke", workdir=tmp_path, device="cpu", progress=False)
    run = experiment.Run("3d_sparse", n_slices=2)
    curve = curved.learning_curve(run)
    steps = curved.train_config_3d(run).steps
    assert list(curve["step"]) == [6, steps] and curve["val_dice"].between(0, 1).all()
    assert curve["seconds"].is_monotonic_increasing and (curve["key"] == curved.row_key(run)).all()
    assert curved.row_key(run) != plain.row_key(run)  # the model files differ (one holds a curve)
    assert plain.learning_curve(run).empty
    with_curve, without = curved.model_3d(run).network.state_dict(), plain.model_3d(run).network.state_dict()
    for name, tensor in without.items():
        assert bool((with_curve[name] == tensor).all()), name


def test_a_curve_preset_needs_a_validation_volume(tiny_volumes, tmp_path):
    train, test = tiny_volumes
    data = experiment.prepare_data([train.image], [train.labels], test.image, test.labels, train.spacing,
                                   name="no-val")
    with pytest.raises(NeurosegInputError, match="validation volume.*n_val=1"):
        experiment.Pipeline(data, preset="sweep_curves", workdir=tmp_path)
    with pytest.raises(NeurosegInputError, match="both val_image and val_labels"):
        experiment.prepare_data([train.image], [train.labels], test.image, test.labels, train.spacing,
                                name="half-val", val_image=test.image)


def test_stage_times_leave_out_the_stages_made_first(tiny_volumes, tmp_path):
    train, test = tiny_volumes
    data = experiment.prepare_data([train.image], [train.labels], test.image, test.labels, train.spacing,
                                   name="tiny")
    # a budget long enough that training takes several times as long as predicting the tiny test volume
    preset = experiment.preset_variant("smoke", overrides_3d={"steps": 80})
    pipe = experiment.Pipeline(data, preset=preset, workdir=tmp_path, device="cpu", progress=False)
    row = pipe.evaluate(experiment.Run("3d_sparse", n_slices=2))  # the prediction has to train its model first
    assert 0 < row["predict_seconds"] < row["train_3d_seconds"] / 2
    assert row["total_seconds"] == pytest.approx(row["train_3d_seconds"] + row["predict_seconds"], abs=0.02)


def test_pseudo_label_scores_pool_the_unannotated_voxels(tiny_volumes, other_volumes, tmp_path):
    train, test = tiny_volumes
    volumes = [train, other_volumes[0]]
    data = experiment.prepare_data([v.image for v in volumes], [v.labels for v in volumes], test.image,
                                   test.labels, train.spacing, name="two")
    pipe = experiment.Pipeline(data, preset="smoke", workdir=tmp_path, device="cpu", progress=False)
    scores = pipe.pseudo_label_scores(n_slices=2, seed=0)
    unannotated = sum(int((~a.annotated).sum()) for a in pipe.sparse_labels(2))
    assert scores["tp"] + scores["fp"] + scores["fn"] + scores["tn"] == unannotated
    pseudo = pipe.pseudo_probabilities(n_slices=2, seed=0)
    truth = np.concatenate([labels[~a.annotated] for labels, a in zip(data.train_labels, pipe.sparse_labels(2))])
    predicted = np.concatenate([p[~a.annotated] >= 0.5 for p, a in zip(pseudo, pipe.sparse_labels(2))])
    tp = int((predicted & truth).sum())
    assert scores["tp"] == tp and scores["dice"] == pytest.approx(2 * tp / (predicted.sum() + truth.sum()))


def test_synthetic_data_with_a_validation_volume_keeps_the_others(tmp_path):
    plain = experiment.synthetic_data(preset="tiny", seed=5, n_train=1, workdir=tmp_path)
    assert plain.val_image is None and plain.val_digest is None
    with_val = experiment.synthetic_data(preset="tiny", seed=5, n_train=1, n_val=1, workdir=tmp_path)
    np.testing.assert_array_equal(with_val.train_images[0], plain.train_images[0])
    np.testing.assert_array_equal(with_val.test_image, plain.test_image)
    assert with_val.train_digest == plain.train_digest and with_val.test_digest == plain.test_digest
    assert with_val.val_image.shape == plain.test_image.shape and with_val.val_labels.dtype == bool
    assert not np.array_equal(with_val.val_image, with_val.test_image)
    with pytest.raises(NeurosegInputError, match="n_val must be 0 or 1"):
        experiment.synthetic_data(preset="tiny", seed=5, n_val=2, workdir=tmp_path)


def test_the_curves_preset_is_the_sweep_budget_plus_validation():
    sweep, curves = experiment.PRESETS["sweep"], experiment.PRESETS["sweep_curves"]
    assert curves.val_every > 0 and sweep.val_every == 0
    without_validation = {k: v for k, v in curves.overrides_3d.items() if k != "val_tile"}
    assert dataclasses.replace(curves, name="sweep", val_every=0, overrides_3d=without_validation) == sweep
