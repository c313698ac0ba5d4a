"""Synthetic face embeddings that mimic LFW's statistics, for the clustering scale benchmark.

Real embeddings of this embedder live in a narrow cone: on LFW two photos of one
person have cosine ~0.95 and two people ~0.84. Random unit vectors in 128-D would
have inter-identity cosine ~0 and make every clustering trivially easy (and change
how many edges a threshold keeps, hence the timings), so the generator reproduces
the cone as a two-level Gaussian model, normalised:

    centre_i = unit(m + centre_scale * g_i)        one per identity
    face_f   = unit(centre_i + noise_scale * h_f)  one per photo

``m`` is a fixed mean direction; ``g`` and ``h`` are zero-mean Gaussians with unit
expected squared norm whose variance decays geometrically over a random basis, with
an *effective dimension* (``1 / sum(lambda^2)`` for eigenvalues ``lambda`` summing to 1)
per level. The two scales set the intra- and inter-identity cosine means, the two
effective dimensions their spreads; all four are fitted to LFW by simulation
(:func:`fit_generator`). Identity sizes are drawn from LFW's empirical size
distribution (4,069 of its 5,749 people have one photo; George W. Bush has 530).

Everything is generated in chunks of identities, straight into a preallocated
float32 array, so a million faces cost their own 512 MB and little more.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["cosine_statistics", "fit_generator", "fit_lfw_statistics", "sample_identity_sizes", "synthetic_embeddings"]

MAX_PER_IDENTITY = 50  # intra pairs: at most this many faces per identity, so 530 photos of one man do not dominate
CHUNK_FACES = 1 << 16
_CALIBRATION_IDENTITIES = 400
_CALIBRATION_PER_IDENTITY = 6


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def cosine_statistics(embeddings: np.ndarray, labels: np.ndarray, max_per_identity: int = MAX_PER_IDENTITY,
                      inter_pairs: int = 200_000, seed: int = 0) -> dict[str, dict[str, float]]:
    """Mean and spread of the cosine between two faces of one identity and of two identities.

    Args:
        embeddings: (N, D) L2-normalised vectors.
        labels: (N,) identity of each row (any sortable values).
        max_per_identity: intra-identity pairs use at most this many faces of each identity
            (the first ones), so the largest identities do not decide the statistic alone.
        inter_pairs: random pairs of faces drawn to estimate the inter-identity statistic.
        seed: for that draw.

    Returns:
        ``{"intra": {"mean", "std", "pairs"}, "inter": {...}}``.
    """
    x = np.asarray(embeddings, dtype=np.float32)
    _, idx = np.unique(np.asarray(labels), return_inverse=True)
    idx = idx.ravel()
    order = np.argsort(idx, kind="stable")
    bounds = np.flatnonzero(np.diff(np.r_[-1, idx[order], -2]))
    intra = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        members = order[lo:min(hi, lo + max_per_identity)]
        if len(members) > 1:
            g = x[members] @ x[members].T
            intra.append(g[np.triu_indices(len(members), 1)])
    intra = np.concatenate(intra) if intra else np.empty(0, np.float32)
    rng = np.random.default_rng(seed)
    a = rng.integers(0, len(x), inter_pairs)
    b = rng.integers(0, len(x), inter_pairs)
    keep = idx[a] != idx[b]
    inter = np.einsum("ij,ij->i", x[a[keep]], x[b[keep]])

    def summary(values: np.ndarray) -> dict[str, float]:
        if values.size == 0:
            return {"mean": float("nan"), "std": float("nan"), "pairs": 0}
        return {"mean": float(values.mean(dtype=np.float64)), "std": float(values.std(dtype=np.float64)),
                "pairs": int(values.size)}

    return {"intra": summary(intra), "inter": summary(inter)}


def fit_lfw_statistics(embeddings: np.ndarray, names: np.ndarray, seed: int = 0, rounds: int = 4) -> dict[str, Any]:
    """Measure what the synthetic data must reproduce, and fit the generator to it.

    Args:
        embeddings: (N, D) L2-normalised embeddings of real faces (e.g. all of LFW).
        names: (N,) identity of each face.
        seed: for the pair sampling and the generator fit.
        rounds: passes of the generator fit (:func:`fit_generator`).

    Returns:
        JSON-ready dict: ``dim``, ``n_faces``, ``n_identities``, ``identity_sizes``
        (``{size: number of identities}``, keys as strings), ``intra_cosine`` and
        ``inter_cosine`` (``mean``, ``std``, ``pairs``) and ``generator`` (the fitted
        parameters :func:`synthetic_embeddings` uses).
    """
    x = np.asarray(embeddings, dtype=np.float32)
    names = np.asarray(names)
    _, counts = np.unique(names, return_counts=True)
    sizes, n_ids = np.unique(counts, return_counts=True)
    cos = cosine_statistics(x, names, seed=seed)
    stats = {
        "dim": int(x.shape[1]),
        "n_faces": int(len(x)),
        "n_identities": int(len(counts)),
        "identity_sizes": {str(int(s)): int(k) for s, k in zip(sizes, n_ids)},
        "intra_cosine": cos["intra"],
        "inter_cosine": cos["inter"],
    }
    stats["generator"] = fit_generator(stats, rounds=rounds, seed=seed + 12345)
    return stats


def _spectrum(effective_dim: float, dim: int) -> np.ndarray:
    """Geometric eigenvalues over ``dim`` axes, summing to 1, with ``1 / sum(l^2) == effective_dim``."""
    effective_dim = float(np.clip(effective_dim, 1.0, dim))
    k = np.arange(dim)

    def eff(rho: float) -> float:
        lam = rho ** k
        lam /= lam.sum()
        return 1.0 / float((lam ** 2).sum())

    lo, hi = 1e-9, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if eff(mid) < effective_dim:
            lo = mid
        else:
            hi = mid
    lam = hi ** k
    return lam / lam.sum()


class _Geometry:
    """The fixed directions of one generator: mean direction, the two bases, an output rotation."""

    def __init__(self, dim: int, rng: np.random.Generator):
        self.dim = dim
        # Centres spread in the (dim-1)-D complement of the mean direction e_0, so m . g == 0.
        self.centre_basis = np.linalg.qr(rng.normal(size=(dim - 1, dim - 1)))[0].astype(np.float32)
        self.noise_basis = np.linalg.qr(rng.normal(size=(dim, dim)))[0].astype(np.float32)
        # Real embeddings are not axis-aligned; rotate so that nothing (e.g. product quantisation) sees the axes.
        self.rotation = np.linalg.qr(rng.normal(size=(dim, dim)))[0].astype(np.float32)
        self.set_params({"centre_scale": 0.0, "noise_scale": 0.0, "centre_dim": dim - 1, "noise_dim": dim})

    def set_params(self, params: dict[str, float]) -> None:
        self.centre_sd = np.sqrt(_spectrum(params["centre_dim"], self.dim - 1)).astype(np.float32)
        self.noise_sd = np.sqrt(_spectrum(params["noise_dim"], self.dim)).astype(np.float32)
        self.centre_scale = np.float32(params["centre_scale"])
        self.noise_scale = np.float32(params["noise_scale"])

    def centres(self, z: np.ndarray) -> np.ndarray:
        """Identity centres from standard normals ``z`` of shape (k, dim-1)."""
        c = np.zeros((len(z), self.dim), np.float32)
        c[:, 0] = 1.0
        c[:, 1:] = self.centre_scale * ((z * self.centre_sd) @ self.centre_basis.T)
        return _unit(c)

    def faces(self, centres: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Unit faces around ``centres`` (one row per face) from standard normals ``z`` (n, dim)."""
        x = centres + self.noise_scale * ((z * self.noise_sd) @ self.noise_basis.T)
        return _unit(x @ self.rotation.T)


class _Simulation:
    """A small fixed sample (common random numbers) whose statistics follow the parameters smoothly."""

    def __init__(self, dim: int, seed: int):
        rng = np.random.default_rng(seed)
        self.geo = _Geometry(dim, rng)
        k, self.per = _CALIBRATION_IDENTITIES, _CALIBRATION_PER_IDENTITY
        self.zc = rng.standard_normal((k, dim - 1), dtype=np.float32)
        self.zn = rng.standard_normal((k * self.per, dim), dtype=np.float32)
        self.iu = np.triu_indices(self.per, 1)

    def __call__(self, params: dict[str, float]) -> tuple[float, float, float, float]:
        """(intra mean, intra std, inter mean, inter std)."""
        self.geo.set_params(params)
        centres = self.geo.centres(self.zc)
        x = self.geo.faces(np.repeat(centres, self.per, axis=0), self.zn).reshape(len(self.zc), self.per, -1)
        gram = np.einsum("kid,kjd->kij", x, x)
        intra = gram[:, self.iu[0], self.iu[1]].ravel()
        # inter: face j of identity i against face j of identity i-1 (cyclic), for every j
        inter = np.einsum("kid,kid->ki", x, np.roll(x, 1, axis=0)).ravel()
        return float(intra.mean()), float(intra.std()), float(inter.mean()), float(inter.std())


def _bisect(f, target: float, lo: float, hi: float, increasing: bool, steps: int = 24) -> float:
    for _ in range(steps):
        mid = (lo + hi) / 2
        if (f(mid) < target) == increasing:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def fit_generator(stats: dict[str, Any], rounds: int = 4, seed: int = 12345) -> dict[str, float]:
    """Fit the generator's four parameters to the measured cosine statistics, by simulation.

    Starts from the closed-form answer for isotropic noise (intra mean ~ 1 / (1 + noise^2),
    inter mean ~ intra mean / (1 + centre^2)), then refines each parameter in turn by
    bisection against a fixed simulated sample (common random numbers keep it monotone).

    Args:
        stats: needs ``dim``, ``intra_cosine`` and ``inter_cosine`` (``mean`` and ``std``).
        rounds: passes over the four parameters.
        seed: the simulated sample.

    Returns:
        ``noise_scale``, ``noise_dim``, ``centre_scale``, ``centre_dim`` and the statistics
        the simulation reaches with them (``fitted_*``), which can fall short of the target
        when it is out of the model's reach (e.g. an inter-identity mean <= 0).
    """
    dim = int(stats["dim"])
    mw, sw = stats["intra_cosine"]["mean"], stats["intra_cosine"]["std"]
    mb, sb = stats["inter_cosine"]["mean"], stats["inter_cosine"]["std"]
    p = {
        "noise_scale": float(np.sqrt(max(1.0 / max(mw, 1e-3) - 1.0, 0.0))),
        "centre_scale": float(np.sqrt(max(mw / max(mb, 1e-3) - 1.0, 0.0))),
        "noise_dim": float(dim),
        "centre_dim": float(dim - 1),
    }

    simulation = _Simulation(dim, seed)

    def sim(**change) -> tuple[float, float, float, float]:
        return simulation({**p, **change})

    for _ in range(rounds):
        p["noise_scale"] = _bisect(lambda v: sim(noise_scale=v)[0], mw, 0.0, 10.0, increasing=False)
        p["noise_dim"] = _bisect(lambda v: sim(noise_dim=v)[1], sw, 1.0, float(dim), increasing=False)
        p["centre_scale"] = _bisect(lambda v: sim(centre_scale=v)[2], mb, 0.0, 50.0, increasing=False)
        p["centre_dim"] = _bisect(lambda v: sim(centre_dim=v)[3], sb, 1.0, float(dim - 1), increasing=False)
    reached = sim()
    p.update({"fitted_intra_mean": reached[0], "fitted_intra_std": reached[1],
              "fitted_inter_mean": reached[2], "fitted_inter_std": reached[3]})
    return {k: round(float(v), 6) for k, v in p.items()}


def sample_identity_sizes(n: int, identity_sizes: dict, rng: np.random.Generator) -> np.ndarray:
    """Identity sizes drawn i.i.d. from an empirical distribution until they hold ``n`` faces.

    Args:
        n: total faces wanted.
        identity_sizes: ``{size: number of identities of that size}`` (keys may be strings, as in JSON).
        rng: random generator.

    Returns:
        int64 sizes summing exactly to ``n`` (the last identity is cut short if needed).
    """
    values = np.array([int(s) for s in identity_sizes], dtype=np.int64)
    weights = np.array([float(c) for c in identity_sizes.values()])
    weights /= weights.sum()
    mean = float((values * weights).sum())
    drawn: list[np.ndarray] = []
    total = 0
    while total < n:
        batch = rng.choice(values, size=int((n - total) / mean * 1.1) + 16, p=weights)
        drawn.append(batch)
        total += int(batch.sum())
    sizes = np.concatenate(drawn)
    cut = int(np.searchsorted(np.cumsum(sizes), n))
    sizes = sizes[: cut + 1].copy()
    sizes[-1] -= int(sizes.sum()) - n
    return sizes


def synthetic_embeddings(n: int, stats: dict[str, Any], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` synthetic unit embeddings with LFW-like identity sizes and cosine statistics.

    Args:
        n: faces to generate.
        stats: from :func:`fit_lfw_statistics` (``dim``, ``identity_sizes`` and ``generator``;
            the generator is fitted here when missing).
        seed: everything (sizes, directions, order) follows from it.

    Returns:
        ``(X, labels)``: (n, dim) float32 unit vectors in random order and their (n,) int64
        identity labels.
    """
    dim = int(stats["dim"])
    params = stats.get("generator") or fit_generator(stats)
    rng = np.random.default_rng([seed, 0])
    geo = _Geometry(dim, rng)
    geo.set_params(params)
    sizes = sample_identity_sizes(n, stats["identity_sizes"], rng)
    position = rng.permutation(n)  # faces are written in random order: no identity arrives contiguous
    x = np.empty((n, dim), np.float32)
    labels = np.empty(n, np.int64)
    ends = np.cumsum(sizes)
    first_id, first_face, chunk = 0, 0, 0
    while first_id < len(sizes):
        last_id = max(int(np.searchsorted(ends, first_face + CHUNK_FACES, side="right")), first_id + 1)
        last_id = min(last_id, len(sizes))
        chunk_sizes = sizes[first_id:last_id]
        m = int(chunk_sizes.sum())
        crng = np.random.default_rng([seed, 1, chunk])
        centres = geo.centres(crng.standard_normal((len(chunk_sizes), dim - 1), dtype=np.float32))
        owner = np.repeat(np.arange(len(chunk_sizes)), chunk_sizes)
        where = position[first_face:first_face + m]
        x[where] = geo.faces(centres[owner], crng.standard_normal((m, dim), dtype=np.float32))
        labels[where] = first_id + owner
        first_id, first_face, chunk = last_id, first_face + m, chunk + 1
    return x, labels
