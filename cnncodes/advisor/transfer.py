"""Transferability scores from the literature, written from the papers (pure NumPy/SciPy).

* :func:`logme`: LogME (You et al., "LogME: Practical Assessment of Pre-trained Models for
  Transfer Learning", ICML 2021): the log marginal evidence of a Bayesian linear regression from
  the codes to each class's one-hot target, maximised over its prior precision ``alpha`` and
  noise precision ``beta`` by the paper's fixed-point iteration (its Algorithm 1, on one SVD of the
  codes), averaged over the classes and divided by the number of images. Higher is better; no
  hyper-parameter and no cross-validation.
* :func:`leep`: LEEP (Nguyen et al., "LEEP: A New Measure to Evaluate Transferability of Learned
  Representations", ICML 2020): the average log-likelihood of the "expected empirical predictor"
  built from the pretrained head's softmax over its own (ImageNet) classes. :func:`leep_share`
  rescales it to the share of the label entropy it explains (0: the head's classes say nothing
  about the user's, 1: they determine them).
* :func:`domain_distance`: the domain similarity of Cui et al. ("Large Scale Fine-Grained
  Categorization and Domain-Specific Transfer Learning", CVPR 2018): the earth mover's distance
  between the target's class means and the source classes, each weighted by its share of images.
  The source images are not available here, so the pretrained head's weight rows stand in for the
  source class means (a softmax head's row points where its class's features lie) and the ground
  distance is the cosine distance (rows and features live on different scales). Lower = closer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: LogME's fixed-point iteration stops when alpha and beta change by less than this (relative).
LOGME_TOL = 1e-5
LOGME_MAX_ITER = 100
#: Added to the denominators of the updates, as in the authors' code (1e-5): keeps ``beta`` finite
#: when the codes can fit a target exactly (more dimensions than images).
LOGME_EPS = 1e-5
#: alpha and beta are kept inside [1/LOGME_CLIP, LOGME_CLIP] (a guard against under/overflow).
LOGME_CLIP = 1e12


@dataclass(frozen=True)
class LogMEFit:
    """One class's evidence maximisation: the converged precisions and the evidence per image."""

    alpha: float
    beta: float
    evidence: float  # log p(y | F, alpha, beta) / n
    iterations: int


def _logme_one(s2: np.ndarray, z: np.ndarray, y_sq: float, n: int, d: int) -> LogMEFit:
    """Fixed point for one target ``y`` given ``s2`` (eigenvalues of F^T F, one per singular
    value), ``z = U^T y`` and ``y_sq = ||y||^2``."""
    alpha, beta = 1.0, 1.0
    rest = max(y_sq - float(z @ z), 0.0)  # part of y outside F's column space
    it = 0
    for it in range(1, LOGME_MAX_ITER + 1):  # noqa: B007 - `it` is read after the loop
        den = alpha + beta * s2
        gamma = float(np.sum(beta * s2 / den))
        m_sq = float(np.sum((beta * np.sqrt(s2) * z / den) ** 2))  # ||m||^2, m = beta A^-1 F^T y
        res = float(np.sum((alpha * z / den) ** 2)) + rest  # ||F m - y||^2
        new_alpha = min(max(gamma / (m_sq + LOGME_EPS), 1 / LOGME_CLIP), LOGME_CLIP)
        new_beta = min(max((n - gamma) / (res + LOGME_EPS), 1 / LOGME_CLIP), LOGME_CLIP)
        done = (abs(new_alpha - alpha) <= LOGME_TOL * alpha
                and abs(new_beta - beta) <= LOGME_TOL * beta)
        alpha, beta = new_alpha, new_beta
        if done:
            break
    den = alpha + beta * s2
    m_sq = float(np.sum((beta * np.sqrt(s2) * z / den) ** 2))
    res = float(np.sum((alpha * z / den) ** 2)) + rest
    log_det = float(np.sum(np.log(den))) + (d - s2.size) * math.log(alpha)
    ev = (n / 2 * math.log(beta) + d / 2 * math.log(alpha) - n / 2 * math.log(2 * math.pi)
          - beta / 2 * res - alpha / 2 * m_sq - log_det / 2)
    return LogMEFit(alpha, beta, ev / n, it)


def logme_fits(features: np.ndarray, labels: np.ndarray) -> list[LogMEFit]:
    """LogME's per-class fits (one-hot target per class value in ``labels``, sorted)."""
    f = np.asarray(features, np.float64)
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    keep = s > s.max(initial=0.0) * 1e-10 * max(n, d)
    u, s2 = u[:, keep], s[keep] ** 2
    out = []
    for c in np.unique(labels):
        y = (np.asarray(labels) == c).astype(np.float64)
        out.append(_logme_one(s2, u.T @ y, float(y @ y), n, d))
    return out


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME of ``features`` (N, D) for integer ``labels`` (N,): the mean over classes of the
    maximised log evidence per image (You et al., ICML 2021). Higher = more transferable."""
    return float(np.mean([fit.evidence for fit in logme_fits(features, labels)]))


def leep(probs: np.ndarray, labels: np.ndarray) -> float:
    """LEEP (Nguyen et al., ICML 2020) of the source-head softmax ``probs`` (N, Z) for target
    ``labels`` (N,): mean log of the expected empirical prediction of each image's label."""
    p = np.asarray(probs, np.float64)
    y = np.unique(np.asarray(labels), return_inverse=True)[1]
    onehot = np.zeros((y.size, int(y.max()) + 1))
    onehot[np.arange(y.size), y] = 1.0
    joint = onehot.T @ p / y.size  # P(y, z)
    cond = joint / np.maximum(joint.sum(0, keepdims=True), 1e-300)  # P(y | z)
    eep = np.sum(cond[y] * p, axis=1)
    return float(np.mean(np.log(np.maximum(eep, 1e-300))))


def label_entropy(labels: np.ndarray) -> float:
    """Entropy (nats) of the label frequencies: ``-LEEP`` of a head that knows nothing."""
    _, c = np.unique(np.asarray(labels), return_counts=True)
    q = c / c.sum()
    return float(-(q * np.log(q)).sum())


def leep_share(leep_value: float, labels: np.ndarray) -> float:
    """``1 + LEEP / H(labels)``: the share of the label entropy the head's predictions explain
    (0 when they are independent of the labels, 1 when they determine them)."""
    h = label_entropy(labels)
    return float(1.0 + leep_value / h) if h > 0 else 0.0


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def emd(cost: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Exact earth mover's distance between weights ``a`` (rows) and ``b`` (columns) under
    ``cost`` (a transport linear programme, scipy's HiGHS)."""
    from scipy.optimize import linprog
    from scipy.sparse import csr_array, eye, kron, vstack

    na, nb = cost.shape
    a = np.asarray(a, np.float64) / np.sum(a)
    b = np.asarray(b, np.float64) / np.sum(b)
    rows = kron(eye(na), np.ones((1, nb)))  # sum_j T_ij = a_i
    cols = kron(np.ones((1, na)), eye(nb))  # sum_i T_ij = b_j
    res = linprog(cost.ravel(), A_eq=csr_array(vstack([rows, cols])),
                  b_eq=np.concatenate([a, b]), bounds=(0, None), method="highs")
    if not res.success:  # pragma: no cover - a balanced transport problem is always feasible
        raise RuntimeError(f"EMD linear programme failed: {res.message}")
    return float(res.fun)


def domain_distance(features: np.ndarray, labels: np.ndarray,
                    source_means: np.ndarray) -> dict[str, float]:
    """Cui et al.'s domain distance between the target classes and the source classes.

    Args:
        features: (N, D) penultimate features of the target images (the head's input).
        labels: (N,) target labels; each class mean is weighted by its share of images.
        source_means: (Z, D) source class means (here the head's weight rows), equal weights
            (ImageNet-1k is balanced).

    Returns:
        ``emd``: the earth mover's distance under the cosine distance (0 = the target classes
        sit on source classes, 1 = orthogonal); ``nearest``: the mean cosine distance of each
        target class to its nearest source class (the EMD's lower bound, a diagnostic).
    """
    y = np.asarray(labels)
    vals, counts = np.unique(y, return_counts=True)
    f = np.asarray(features, np.float64)
    means = np.stack([f[y == v].mean(0) for v in vals])
    cost = 1.0 - _unit(means) @ _unit(np.asarray(source_means, np.float64)).T
    cost = np.maximum(cost, 0.0)
    w = counts / counts.sum()
    return {"emd": emd(cost, w, np.ones(cost.shape[1])),
            "nearest": float(np.sum(w * cost.min(1)))}
