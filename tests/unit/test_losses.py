"""Every loss head against an independent NumPy reference: value and gradients, centre update, mining.

The references below are written with loops straight from the papers' formulas (no
shared code with components.train.losses); gradients of the references come from
central finite differences in float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from components.train.losses import (  # noqa: E402
    OfflineTripletMiner,
    make_loss,
    online_triplet_indices,
    pairwise_squared_distances,
)

RNG = np.random.default_rng(1234)
N, D, C = 10, 6, 4
X = RNG.normal(size=(N, D))
Y = np.array([0, 0, 1, 1, 1, 2, 2, 3, 3, 0])
W = RNG.normal(size=(D, C))
B = RNG.normal(size=C) * 0.1


# --------------------------------------------------------------------------- NumPy references


def ref_softmax(x, w, b, y):
    total = 0.0
    for i in range(len(x)):
        z = x[i] @ w + b
        z = z - z.max()
        total += -(z[y[i]] - math.log(np.exp(z).sum()))
    return total / len(x)


def ref_center(x, w, b, y, centers, lam):
    term = sum(0.5 * ((x[i] - centers[y[i]]) ** 2).sum() for i in range(len(x))) / len(x)
    return ref_softmax(x, w, b, y) + lam * term


def ref_center_update(x, y, centers, alpha):
    new = centers.copy()
    for j in range(len(centers)):
        members = [i for i in range(len(x)) if y[i] == j]
        delta = sum((centers[j] - x[i] for i in members), np.zeros(centers.shape[1])) / (1 + len(members))
        new[j] = centers[j] - alpha * delta
    return new


def ref_margin_softmax(x, w, y, s, target_logit):
    total = 0.0
    for i in range(len(x)):
        xi = x[i] / np.linalg.norm(x[i])
        cos = np.array([xi @ (w[:, j] / np.linalg.norm(w[:, j])) for j in range(w.shape[1])])
        z = s * cos
        z[y[i]] = s * target_logit(cos[y[i]])
        z = z - z.max()
        total += -(z[y[i]] - math.log(np.exp(z).sum()))
    return total / len(x)


def ref_cosface(x, w, y, s, m):
    return ref_margin_softmax(x, w, y, s, lambda c: c - m)


def ref_arcface(x, w, y, s, m):
    def target(c):
        theta = math.acos(max(-1.0, min(1.0, c)))
        return math.cos(theta + m) if theta + m < math.pi else c - m * math.sin(m)

    return ref_margin_softmax(x, w, y, s, target)


def dist2(a, b):
    return float(((a - b) ** 2).sum())


def ref_triplets(x, y, mining):
    """Mined (a, p, n) triplets by exhaustive search."""
    out = []
    for a in range(len(x)):
        pos = [p for p in range(len(x)) if p != a and y[p] == y[a]]
        neg = [k for k in range(len(x)) if y[k] != y[a]]
        if not pos or not neg:
            continue
        if mining == "hard":
            p = max(pos, key=lambda q: dist2(x[a], x[q]))
            out.append((a, p, min(neg, key=lambda k: dist2(x[a], x[k]))))
            continue
        for p in pos:
            farther = [k for k in neg if dist2(x[a], x[k]) > dist2(x[a], x[p])]
            if farther:
                out.append((a, p, min(farther, key=lambda k: dist2(x[a], x[k]))))
            else:
                out.append((a, p, max(neg, key=lambda k: dist2(x[a], x[k]))))
    return out


def ref_triplet(x, y, margin, mining):
    triplets = ref_triplets(x, y, mining)
    return sum(max(0.0, dist2(x[a], x[p]) - dist2(x[a], x[n]) + margin) for a, p, n in triplets) / len(triplets)


def ref_quadruplet(x, y, margin, margin2):
    total, count = 0.0, 0
    for a, p, n1 in ref_triplets(x, y, "hard"):
        pairs = [(k, l) for k in range(len(x)) for l in range(len(x))
                 if y[k] != y[l] and y[k] != y[a] and y[l] != y[a]]
        if not pairs:
            continue
        k, l = min(pairs, key=lambda kl: dist2(x[kl[0]], x[kl[1]]))
        d_ap = dist2(x[a], x[p])
        total += max(0.0, d_ap - dist2(x[a], x[n1]) + margin) + max(0.0, d_ap - dist2(x[k], x[l]) + margin2)
        count += 1
    return total / count


def numerical_gradient(f, value, eps=1e-6):
    grad = np.zeros_like(value)
    for idx in np.ndindex(*value.shape):
        up, down = value.copy(), value.copy()
        up[idx] += eps
        down[idx] -= eps
        grad[idx] = (f(up) - f(down)) / (2 * eps)
    return grad


# --------------------------------------------------------------------------- helpers


def value_and_gradients(head, x, y):
    xt = tf.Variable(x.astype(np.float32))
    with tf.GradientTape() as tape:
        loss = head(xt, tf.constant(y))
    grads = tape.gradient(loss, [xt] + list(head.trainable_weights))
    return float(loss), [tf.convert_to_tensor(g).numpy() for g in grads]


def assert_close(actual, expected, rtol=2e-3, atol=2e-4):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


# --------------------------------------------------------------------------- tests


def test_softmax_value_and_gradients():
    head = make_loss("softmax", C, D)
    head.kernel.assign(W.astype(np.float32))
    head.bias.assign(B.astype(np.float32))
    loss, (gx, gw, gb) = value_and_gradients(head, X, Y)
    assert_close(loss, ref_softmax(X, W, B, Y))
    assert_close(gx, numerical_gradient(lambda x: ref_softmax(x, W, B, Y), X))
    assert_close(gw, numerical_gradient(lambda w: ref_softmax(X, w, B, Y), W))
    assert_close(gb, numerical_gradient(lambda b: ref_softmax(X, W, b, Y), B))


def test_center_loss_value_gradients_and_centre_update():
    alpha, lam = 0.4, 0.7
    head = make_loss("center", C, D, alpha=alpha, **{"lambda": lam})
    centers = RNG.normal(size=(C, D))
    head.kernel.assign(W.astype(np.float32))
    head.bias.assign(B.astype(np.float32))
    head.centers.assign(centers.astype(np.float32))
    loss, (gx, gw, gb) = value_and_gradients(head, X, Y)
    assert_close(loss, ref_center(X, W, B, Y, centers, lam))
    assert_close(gx, numerical_gradient(lambda x: ref_center(x, W, B, Y, centers, lam), X))
    assert_close(gw, numerical_gradient(lambda w: ref_center(X, w, B, Y, centers, lam), W))
    assert [w.name for w in head.trainable_weights] == ["kernel", "bias"], "centres must not be trained by SGD"

    # Class 3 has two faces; a label absent from the batch must leave its centre alone.
    y = np.where(Y == 3, 1, Y)
    head.post_step(tf.constant(X, tf.float32), tf.constant(y))
    expected = ref_center_update(X, y, centers, alpha)
    assert_close(head.centers.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert_close(head.centers.numpy()[3], centers[3], rtol=0, atol=1e-6)
    assert not np.allclose(expected[0], centers[0])


@pytest.mark.parametrize("mining", ["semi-hard", "hard"])
def test_triplet_value_and_gradient(mining):
    head = make_loss("triplet", C, D, margin=4.0, mining=mining)
    loss, (gx,) = value_and_gradients(head, X, Y)
    expected = ref_triplet(X, Y, 4.0, mining)
    assert expected > 0
    assert_close(loss, expected)
    assert_close(gx, numerical_gradient(lambda x: ref_triplet(x, Y, 4.0, mining), X))


def test_offline_triplet_head_reads_a_p_n_layout():
    head = make_loss("triplet", C, D, margin=1.5, mining="offline")
    flat = X[:9]
    loss, (gx,) = value_and_gradients(head, flat, np.zeros(9, int))

    def ref(x):
        return np.mean([max(0.0, dist2(x[i], x[i + 1]) - dist2(x[i], x[i + 2]) + 1.5) for i in (0, 3, 6)])

    assert_close(loss, ref(flat))
    assert_close(gx, numerical_gradient(ref, flat))


@pytest.mark.parametrize("s,m", [(30.0, 0.35), (8.0, 0.1)])
def test_cosface_value_and_gradients(s, m):
    head = make_loss("cosface", C, D, s=s, m=m)
    head.kernel.assign(W.astype(np.float32))
    loss, (gx, gw) = value_and_gradients(head, X, Y)
    assert_close(loss, ref_cosface(X, W, Y, s, m))
    assert_close(gx, numerical_gradient(lambda x: ref_cosface(x, W, Y, s, m), X), rtol=5e-3, atol=5e-4)
    assert_close(gw, numerical_gradient(lambda w: ref_cosface(X, w, Y, s, m), W), rtol=5e-3, atol=5e-4)


def test_arcface_value_and_gradients_including_the_past_pi_branch():
    s, m = 16.0, 0.5
    x = X.copy()
    # Row 0 points almost opposite its class vector: theta + m > pi takes the fallback logit.
    w0 = W[:, Y[0]] / np.linalg.norm(W[:, Y[0]])
    ortho = RNG.normal(size=D)
    ortho -= (ortho @ w0) * w0
    x[0] = -0.97 * w0 + math.sqrt(1 - 0.97**2) * ortho / np.linalg.norm(ortho)
    assert math.acos(-0.97) + m > math.pi
    head = make_loss("arcface", C, D, s=s, m=m)
    head.kernel.assign(W.astype(np.float32))
    loss, (gx, gw) = value_and_gradients(head, x, Y)
    assert_close(loss, ref_arcface(x, W, Y, s, m))
    assert_close(gx, numerical_gradient(lambda v: ref_arcface(v, W, Y, s, m), x), rtol=5e-3, atol=5e-4)
    assert_close(gw, numerical_gradient(lambda w: ref_arcface(x, w, Y, s, m), W), rtol=5e-3, atol=5e-4)
    # The margin makes the loss larger than plain normalised softmax at the same scale.
    assert loss > ref_margin_softmax(x, W, Y, s, lambda c: c)


def test_quadruplet_value_and_gradient():
    head = make_loss("quadruplet", C, D, margin=4.0, margin2=3.0)
    loss, (gx,) = value_and_gradients(head, X, Y)
    expected = ref_quadruplet(X, Y, 4.0, 3.0)
    assert expected > 0
    assert_close(loss, expected)
    assert_close(gx, numerical_gradient(lambda x: ref_quadruplet(x, Y, 4.0, 3.0), X))


def test_losses_fall_when_the_embedding_improves():
    """Sanity beyond the reference: collapsing each class to a point lowers every metric loss."""
    centres = RNG.normal(size=(C, D)) * 3
    tight = centres[Y] + RNG.normal(size=(N, D)) * 0.01
    for name, params in [("triplet", {"mining": "hard"}), ("triplet", {}), ("quadruplet", {})]:
        head = make_loss(name, C, D, **params)
        assert float(head(tf.constant(tight, tf.float32), Y)) < float(head(tf.constant(X, tf.float32), Y))


def test_mining_picks_the_right_triplets_on_a_hand_made_batch():
    # 1-D points, no ties: identity 0 at 0.0, 1.0, 1.5; identity 1 at 0.4, 1.2, 3.0; identity 2 at 2.1 alone.
    points = np.array([[0.0], [1.0], [1.5], [0.4], [1.2], [3.0], [2.1]])
    labels = np.array([0, 0, 0, 1, 1, 1, 2])
    distances = pairwise_squared_distances(tf.constant(points, tf.float32))
    a, p, n, valid = (t.numpy() for t in online_triplet_indices(distances, tf.constant(labels), "hard", 0.2))
    hard = {(int(a[i]), int(p[i]), int(n[i])) for i in range(len(a)) if valid[i]}
    # Anchor 0 (at 0.0): farthest positive 2 (1.5), nearest negative 3 (0.4).
    # Anchor 5 (at 3.0): farthest positive 3 (0.4), nearest negative 6 (2.1).
    # Anchor 6 has no positive: no triplet.
    assert hard == {(0, 2, 3), (1, 0, 4), (2, 0, 4), (3, 5, 0), (4, 5, 1), (5, 3, 6)}

    a, p, n, valid = (t.numpy() for t in online_triplet_indices(distances, tf.constant(labels), "semi-hard", 0.2))
    semi = {(int(a[i]), int(p[i])): int(n[i]) for i in range(len(a)) if valid[i]}
    assert len(semi) == 12  # every ordered same-identity pair; identity 2's single face gives none
    assert semi[(0, 1)] == 4  # d(0,1)=1; negatives 0.16, 1.44, 4.41, 9: nearest farther is face 4
    assert semi[(0, 2)] == 6  # d(0,2)=2.25: nearest farther negative is 6 (4.41)
    assert semi[(1, 0)] == 6  # d(1,0)=1; negatives 0.36, 0.04, 4, 1.21: nearest farther is 6
    assert semi[(4, 5)] == 0  # d(4,5)=3.24; negatives 1.44, 0.04, 0.09, 0.81: none farther, so the farthest
    assert semi == {key: n for key, n in ((t[:2], t[2]) for t in ref_triplets(points, labels, "semi-hard"))}


def test_offline_miner_follows_algorithm_1():
    points = np.array([[0.0], [1.0], [1.5], [0.4], [1.2], [3.0], [2.1]])
    labels = np.array([0, 0, 0, 1, 1, 1, 2])
    miner = OfflineTripletMiner(margin=0.5, every_n_steps=3, seed=0)
    assert [miner.due(s) for s in range(7)] == [True, False, False, True, False, False, True]
    triplets = miner.mine(points, labels)
    d = (points - points.T) ** 2
    assert len(triplets) > 0
    for a, p, n in triplets:
        assert labels[a] == labels[p] and a != p and labels[n] != labels[a]
        assert d[a, p] < d[a, n] < d[a, p] + 0.5
    # Every anchor-positive pair with a semi-hard negative is used exactly once.
    expected_pairs = {(a, p) for a in range(7) for p in range(7) if a != p and labels[a] == labels[p]
                      and any(d[a, p] < d[a, k] < d[a, p] + 0.5 for k in range(7) if labels[k] != labels[a])}
    assert {(int(a), int(p)) for a, p, _ in triplets} == expected_pairs
    assert len(triplets) == len(expected_pairs)
    # (0, 1): d=1; negatives at d 0.16, 1.44, 4.41, 9: only face 4 lies in (1, 1.5).
    assert [tuple(t) for t in triplets if tuple(t[:2]) == (0, 1)] == [(0, 1, 4)]
    batches = list(miner.batches(triplets, 2))
    assert sorted(map(tuple, np.concatenate(batches).reshape(-1, 3))) == sorted(map(tuple, triplets))

    fallback = OfflineTripletMiner(margin=0.5, fallback_hardest=True).mine(points, labels)
    assert len(fallback) == 12


@pytest.mark.parametrize("name,params", [("softmax", {"s": 1}), ("center", {"alpha": 2.0}),
                                         ("triplet", {"mining": "random"}), ("nope", {})])
def test_bad_parameters_are_refused(name, params):
    with pytest.raises(ValueError):
        make_loss(name, C, D, **params)


def test_too_few_identities_is_refused():
    with pytest.raises(ValueError, match="at least 2 identities"):
        make_loss("softmax", 1, D)


def test_heads_stay_float32_under_mixed_precision():
    keras = pytest.importorskip("keras")
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        head = make_loss("center", C, D)
        head.kernel.assign(W.astype(np.float32))
        head.bias.assign(B.astype(np.float32))
        loss = head(tf.constant(X, tf.float16), tf.constant(Y))
        assert loss.dtype == tf.float32
        np.testing.assert_allclose(float(loss), ref_center(X.astype(np.float16).astype(np.float64), W, B, Y,
                                                           np.zeros((C, D)), head.lambda_), rtol=1e-4)
    finally:
        keras.mixed_precision.set_global_policy(previous)


@pytest.mark.parametrize("name,params", [("softmax", {}), ("center", {"alpha": 0.3, "lambda_": 0.01}),
                                         ("triplet", {"margin": 0.3, "mining": "hard"}), ("cosface", {"s": 16.0}),
                                         ("arcface", {"m": 0.4}), ("quadruplet", {"margin2": 0.05})])
def test_heads_round_trip_through_their_config(name, params):
    head = make_loss(name, C, D, **params)
    clone = type(head).from_config(head.get_config())
    assert clone.get_config() == head.get_config()
    assert [w.shape for w in clone.weights] == [w.shape for w in head.weights]
