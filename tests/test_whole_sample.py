"""The whole-sample modules agree with each other (chapter 10): a synthetic sample's truth, read back through
zarrio and counted by objects, is the generator's own neuron list."""
from __future__ import annotations

import numpy as np
import pytest

from neuroseg_lite import objects, synthlarge, zarrio


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    path = tmp_path_factory.mktemp("whole") / "sample.ome.zarr"
    return synthlarge.write_sample(path, shape=(24, 96, 80), preset="tiny", seed=2, block=(8, 32, 32),
                                   progress=False)


def test_the_truth_labels_tabulated_block_by_block_are_the_neuron_list(sample):
    labels = zarrio.open_stack(sample / "labels" / "neurons")
    assert labels.spacing == (2.0, 0.9, 0.9) and labels.data.chunksize == (8, 32, 32)
    table = objects.neuron_table(labels.data, spacing=labels.spacing).sort_values("id")
    truth = synthlarge.read_truth(sample).sort_values("id")
    assert table["id"].tolist() == truth["id"].tolist()
    for column in ("z_um", "y_um", "x_um", "volume_um3"):
        np.testing.assert_allclose(table[column].to_numpy(), truth[column].to_numpy(), rtol=1e-9, atol=1e-9)


def test_counting_the_truth_mask_finds_the_true_neurons(sample):
    mask = zarrio.open_stack(sample / "labels" / "neurons").data > 0
    spacing = zarrio.open_stack(sample).spacing
    found = objects.count_neurons(mask, spacing=spacing, min_volume_um3=0.0)
    truth = synthlarge.read_truth(sample)
    columns = ["z_um", "y_um", "x_um"]
    match = objects.match_centroids(found.table[columns].to_numpy(), truth[columns].to_numpy(), radius_um=3.0)
    # Somata never overlap but may touch; touching ones merge into one object, nothing else may differ.
    assert found.count <= len(truth) and match["fp"] == found.count - match["tp"]
    assert match["f1"] >= 0.9, match
    assert found.density_per_mm3 == pytest.approx(found.count / (np.prod((24, 96, 80)) * np.prod(spacing) * 1e-9))
