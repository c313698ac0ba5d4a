"""Unit tests for components.bench.synthetic: LFW-like synthetic embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from components.bench.synthetic import (
    cosine_statistics,
    fit_generator,
    fit_lfw_statistics,
    sample_identity_sizes,
    synthetic_embeddings,
)

# Roughly what the engine's embeddings show on LFW: a narrow cone.
TARGETS = {
    "dim": 128,
    "identity_sizes": {"1": 4069, "2": 779, "3": 291, "4": 187, "5": 112, "10": 15, "30": 2, "530": 1},
    "intra_cosine": {"mean": 0.95, "std": 0.017},
    "inter_cosine": {"mean": 0.84, "std": 0.035},
}


@pytest.fixture(scope="module")
def stats():
    return {**TARGETS, "generator": fit_generator(TARGETS, rounds=2)}


def test_generated_cosine_statistics_match_the_targets(stats):
    x, labels = synthetic_embeddings(6000, stats, seed=3)
    measured = cosine_statistics(x, labels)
    assert measured["intra"]["mean"] == pytest.approx(0.95, abs=0.005)
    assert measured["inter"]["mean"] == pytest.approx(0.84, abs=0.01)
    assert measured["intra"]["std"] == pytest.approx(0.017, rel=0.25)
    assert measured["inter"]["std"] == pytest.approx(0.035, rel=0.25)


def test_output_is_unit_float32_with_exact_size_and_random_order(stats):
    x, labels = synthetic_embeddings(5000, stats, seed=1)
    assert x.shape == (5000, 128) and x.dtype == np.float32 and labels.shape == (5000,)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    # shuffled: neighbours in the array are rarely the same identity
    assert (labels[1:] == labels[:-1]).mean() < 0.05


def test_generation_is_deterministic_and_chunking_does_not_change_statistics(stats, monkeypatch):
    a, la = synthetic_embeddings(3000, stats, seed=7)
    b, lb = synthetic_embeddings(3000, stats, seed=7)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    import components.bench.synthetic as synthetic

    monkeypatch.setattr(synthetic, "CHUNK_FACES", 256)  # many chunks
    c, lc = synthetic_embeddings(3000, stats, seed=7)
    assert np.bincount(lc).tolist() == np.bincount(la).tolist()  # same identity sizes
    m = cosine_statistics(c, lc)
    assert m["intra"]["mean"] == pytest.approx(0.95, abs=0.006)


def test_identity_sizes_follow_the_empirical_distribution_and_sum_to_n():
    rng = np.random.default_rng(0)
    sizes = sample_identity_sizes(100_000, {"1": 3, "2": 1}, rng)
    assert sizes.sum() == 100_000 and sizes.min() >= 1
    assert (sizes[:-1] == 1).mean() == pytest.approx(0.75, abs=0.01)
    assert set(np.unique(sizes[:-1])) <= {1, 2}


def test_fit_lfw_statistics_measures_sizes_and_cosines(stats):
    x, labels = synthetic_embeddings(4000, stats, seed=2)
    names = np.array([f"person_{i}" for i in labels])
    fitted = fit_lfw_statistics(x, names, rounds=2)
    assert fitted["n_faces"] == 4000 and fitted["dim"] == 128
    assert sum(int(s) * k for s, k in fitted["identity_sizes"].items()) == 4000
    assert fitted["n_identities"] == len(np.unique(labels))
    assert fitted["intra_cosine"]["mean"] == pytest.approx(0.95, abs=0.006)
    # fitting the generator to its own output lands near the parameters it came from
    assert fitted["generator"]["noise_scale"] == pytest.approx(stats["generator"]["noise_scale"], rel=0.1)
    assert fitted["generator"]["fitted_inter_mean"] == pytest.approx(fitted["inter_cosine"]["mean"], abs=0.005)


def test_intra_statistic_caps_faces_per_identity():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.r_[np.zeros(100, int), np.arange(1, 21)]
    measured = cosine_statistics(x, labels, max_per_identity=10)
    assert measured["intra"]["pairs"] == 45  # C(10, 2): the big identity is capped, singletons give none
