"""cnncodes.advisor.transfer: LogME against an independent evaluation of the evidence, LEEP and
the EMD domain distance on constructed cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from cnncodes.advisor.transfer import (
    domain_distance,
    emd,
    label_entropy,
    leep,
    leep_share,
    logme,
    logme_fits,
)


def _evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log p(y | F, alpha, beta) with w ~ N(0, I/alpha), y ~ N(F w, I/beta), marginalised over
    w: y ~ N(0, I/beta + F F^T / alpha) (a dense Gaussian, no SVD, no closed form)."""
    n = f.shape[0]
    cov = np.eye(n) / beta + f @ f.T / alpha
    return float(multivariate_normal(mean=np.zeros(n), cov=cov).logpdf(y))


@pytest.mark.parametrize("n,d", [(60, 8), (30, 50)])  # n > d and the D > n branch
def test_logme_matches_direct_gaussian_evidence_and_is_a_maximum(n, d):
    rng = np.random.default_rng(n + d)
    f = rng.normal(size=(n, d))
    labels = rng.integers(0, 3, size=n)
    labels[:3] = [0, 1, 2]
    fits = logme_fits(f, labels)
    assert len(fits) == 3
    for c, fit in zip(range(3), fits, strict=True):
        y = (labels == c).astype(float)
        direct = _evidence(f, y, fit.alpha, fit.beta) / n
        assert fit.evidence == pytest.approx(direct, abs=1e-9)
        # the fixed point maximises the evidence: a grid around it is never higher
        for ka, kb in itertools.product((0.5, 0.8, 1.25, 2.0), repeat=2):
            assert _evidence(f, y, fit.alpha * ka, fit.beta * kb) / n <= fit.evidence + 1e-9
    assert logme(f, labels) == pytest.approx(np.mean([x.evidence for x in fits]))


def test_logme_ranks_informative_features_above_noise():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 40)
    centres = rng.normal(size=(4, 16)) * 3
    good = centres[labels] + rng.normal(size=(160, 16))
    noise = rng.normal(size=(160, 16))
    assert logme(good, labels) > logme(noise, labels) + 0.1


def test_leep_bounds_and_share():
    labels = np.repeat(np.arange(3), 20)
    # a head whose prediction determines the label: LEEP -> 0, share -> 1
    sharp = np.full((60, 5), 1e-9)
    sharp[np.arange(60), labels] = 1.0
    sharp /= sharp.sum(1, keepdims=True)
    assert leep(sharp, labels) == pytest.approx(0.0, abs=1e-6)
    assert leep_share(leep(sharp, labels), labels) == pytest.approx(1.0, abs=1e-6)
    # a head that says the same thing for every image: LEEP = -H(labels), share 0
    flat = np.tile(np.array([0.5, 0.2, 0.1, 0.1, 0.1]), (60, 1))
    assert leep(flat, labels) == pytest.approx(-label_entropy(labels))
    assert leep_share(leep(flat, labels), labels) == pytest.approx(0.0, abs=1e-12)
    assert label_entropy(labels) == pytest.approx(np.log(3))


def test_emd_small_exact_cases():
    # two points to two points: the optimal plan crosses nothing
    cost = np.array([[0.0, 1.0], [1.0, 0.0]])
    assert emd(cost, np.array([1, 1]), np.array([1, 1])) == pytest.approx(0.0)
    # all mass must move from 0 to 1 at cost 0.7 for half of it
    assert emd(np.array([[0.0, 0.7]]), np.array([1.0]), np.array([1, 1])) == pytest.approx(0.35)


def test_domain_distance_orders_aligned_and_orthogonal_classes():
    rng = np.random.default_rng(1)
    source = np.eye(6)  # six source classes along the axes
    labels = np.repeat(np.arange(2), 30)
    on = np.eye(6)[labels] * 5 + 0.05 * rng.normal(size=(60, 6))  # target classes = sources 0, 1
    off = np.abs(rng.normal(size=(60, 6)))  # every class a blur over all axes
    d_on, d_off = domain_distance(on, labels, source), domain_distance(off, labels, source)
    assert d_on["nearest"] < 0.01 < d_off["nearest"]
    assert d_on["nearest"] <= d_on["emd"] and d_off["nearest"] <= d_off["emd"]
