"""The experiment runner: one row per method, cached models, resumable results files, clear errors."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from neuroseg_lite import experiment, synth
from neuroseg_lite._checks import NeurosegInputError


@pytest.fixture(scope="module")
def tiny_volumes():
    train = synth.make_volume(preset="tiny", seed=1)
    test = synth.make_volume(preset="tiny", seed=2)
    return train, test


def test_compare_returns_one_row_per_method_and_resumes(tiny_volumes, tmp_path):
    train, test = tiny_volumes
    image_before = train.image.copy()
    results = tmp_path / "results.csv"
    table = experiment.compare([train.image], [train.labels], test.image, test.labels, train.spacing,
                               n_slices=2, lam=0.5, seed=0, preset="smoke", name="tiny", workdir=tmp_path,
                               results_file=results, device="cpu")
    assert list(table["method"]) == list(experiment.METHODS)
    for column in ("dice", "precision", "recall", "iou", "tp", "fp", "fn", "tn", "object_f1", "hd95_um",
                   "surface_dice", "train_2d_seconds", "pseudo_seconds", "train_3d_seconds",
                   "predict_seconds", "total_seconds"):
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
    assert len(pd.read_csv(results)) == 4
    assert len(list((tmp_path / "models").glob("*.pt"))) == 4

    # A second call finds every row in the results file and trains nothing.
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "models").glob("*.pt")}
    again = experiment.compare([train.image], [train.labels], test.image, test.labels, train.spacing,
                               n_slices=2, lam=0.5, seed=0, preset="smoke", name="tiny", workdir=tmp_path,
                               results_file=results, device="cpu")
    assert len(again) == 4 and len(pd.read_csv(results)) == 4
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    pd.testing.assert_frame_equal(again.reset_index(drop=True), pd.read_csv(results))


def test_pipeline_reloads_cached_models(tiny_volumes, tmp_path):
    train, test = tiny_volumes
    data = experiment.prepare_data([train.image], [train.labels], test.image, test.labels, train.spacing,
                                   name="tiny")
    first = experiment.Pipeline(data, preset="smoke", workdir=tmp_path, device="cpu", progress=False)
    prediction = first.predict("3d_sparse", n_slices=1)
    assert prediction.shape == test.image.shape and prediction.dtype == np.float32
    second = experiment.Pipeline(data, preset="smoke", workdir=tmp_path, device="cpu", progress=False)
    model, info = second.model_3d("3d_sparse", n_slices=1)
    assert second.timings == {} and "history" in info
    fresh = second.predict("3d_sparse", n_slices=1, image=data.test_image)
    np.testing.assert_allclose(fresh, prediction, atol=2e-3)  # the cached copy is stored as float16


def test_bad_arguments_are_named(tiny_volumes, tmp_path):
    train, test = tiny_volumes
    args = ([train.image], [train.labels], test.image, test.labels, train.spacing)
    with pytest.raises(NeurosegInputError, match="preset"):
        experiment.compare(*args, n_slices=1, preset="huge", workdir=tmp_path)
    with pytest.raises(NeurosegInputError, match="lambda"):
        experiment.compare(*args, n_slices=1, lam=-0.1, preset="smoke", workdir=tmp_path)
    with pytest.raises(NeurosegInputError, match="shape"):
        experiment.compare([train.image], [train.labels[:-1]], test.image, test.labels, train.spacing,
                           n_slices=1, preset="smoke", workdir=tmp_path)
    with pytest.raises(NeurosegInputError, match="one label volume per image"):
        experiment.compare([train.image], [], test.image, test.labels, train.spacing, n_slices=1,
                           preset="smoke", workdir=tmp_path)
    with pytest.raises(NeurosegInputError, match="n_slices"):
        experiment.compare(*args, n_slices=0, preset="smoke", workdir=tmp_path)


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
    corrected = pipe.predict("2d", n_slices=2, image=data.test_image)
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
    retrained = experiment.preset_variant("smoke", overrides_2d={"steps": 3})
    assert retrained.shared_2d_name is None and retrained.name_2d != "smoke"
    assert all(c.isalnum() or c in "+-_." for c in retrained.name), retrained.name
