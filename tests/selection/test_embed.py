"""faiss spherical k-means, prototypicality and SemDeDup on synthetic embeddings."""

import faiss
import numpy as np
import pytest

from winnow.selection.embed import (
    assign_to_centroids,
    class_prototype_distance,
    l2_normalize,
    semdedup,
    spherical_kmeans,
)


def _mixture(rng, n_per=200, k=5, d=16, spread=0.15):
    centers = l2_normalize(rng.standard_normal((k, d)))
    labels = np.repeat(np.arange(k), n_per)
    x = centers[labels] + spread * rng.standard_normal((k * n_per, d)) / np.sqrt(d)
    return x.astype(np.float32), labels


def test_spherical_kmeans_recovers_clusters_and_distances():
    rng = np.random.default_rng(0)
    x, labels = _mixture(rng)
    x *= rng.uniform(0.5, 3.0, size=(len(x), 1)).astype(np.float32)  # norms must not matter
    threads_before = faiss.omp_get_max_threads()
    res = spherical_kmeans(x, 5, niter=20, nredo=10, seed=1, threads=1)
    assert faiss.omp_get_max_threads() == threads_before
    np.testing.assert_allclose(np.linalg.norm(res.centroids, axis=1), 1.0, rtol=1e-5)
    # each true cluster maps to one k-means cluster
    for c in range(5):
        assert len(np.unique(res.assignment[labels == c])) == 1
    assert len(np.unique(res.assignment)) == 5
    cos = np.einsum("nd,nd->n", l2_normalize(x), res.centroids[res.assignment])
    np.testing.assert_allclose(res.distance, 1.0 - cos, atol=1e-5)
    # assigned centroid is the nearest one by cosine
    all_cos = l2_normalize(x) @ res.centroids.T
    np.testing.assert_array_equal(res.assignment, all_cos.argmax(1))
    # float16 storage gives the same assignment
    again, _ = assign_to_centroids(x.astype(np.float16), res.centroids, chunk_size=77)
    assert np.mean(again == res.assignment) > 0.99


def test_class_prototype_distance():
    rng = np.random.default_rng(1)
    x, labels = _mixture(rng, n_per=50, k=3)
    got = class_prototype_distance(x, labels)
    xn = l2_normalize(x)
    for c in range(3):
        proto = l2_normalize(xn[labels == c].mean(0, keepdims=True))[0]
        np.testing.assert_allclose(got[labels == c], 1 - xn[labels == c] @ proto, atol=1e-5)


def _reference_max_sim(x, assignment, key):
    """Brute force: per cluster, full similarity matrix in member order."""
    xn = l2_normalize(x)
    out = np.full(len(x), -np.inf)
    for c in np.unique(assignment):
        members = np.flatnonzero(assignment == c)
        members = members[np.argsort(key[members], kind="stable")]
        sim = xn[members] @ xn[members].T
        for j in range(1, len(members)):
            out[members[j]] = sim[j, :j].max()
    return out


@pytest.mark.parametrize("keep", ["hard", "easy"])
def test_semdedup_equals_brute_force(keep):
    rng = np.random.default_rng(2)
    x, _ = _mixture(rng, n_per=60, k=4)
    res = spherical_kmeans(x, 4, seed=3)
    got = semdedup(x, res.assignment, [0.01, 0.1], distance=res.distance, keep=keep, block_size=7)
    key = -res.distance if keep == "hard" else res.distance
    ref = _reference_max_sim(x, res.assignment, key.astype(np.float64))
    np.testing.assert_allclose(got.max_similarity, ref, atol=1e-5)
    # several eps in one pass, each a threshold on the same similarities
    for e in (0.01, 0.1):
        np.testing.assert_array_equal(got.duplicates[e], got.max_similarity > 1 - e)
    assert np.all(got.duplicates[0.1] >= got.duplicates[0.01])


def test_semdedup_finds_planted_duplicates():
    rng = np.random.default_rng(4)
    base, _ = _mixture(rng, n_per=400, k=5, d=32, spread=0.6)
    originals = rng.choice(len(base), size=200, replace=False)
    copies = base[originals] + 1e-3 * rng.standard_normal((200, 32)).astype(np.float32)
    x = np.concatenate([base, copies])
    planted = np.zeros(len(x), dtype=bool)
    planted[len(base) :] = True
    res = spherical_kmeans(x, 5, seed=0)
    dup = semdedup(x, res.assignment, 0.001, distance=res.distance).duplicates[0.001]
    # exactly one of each (original, copy) pair goes; nothing else does
    pair_removed = dup[originals].astype(int) + dup[len(base) :].astype(int)
    assert np.all(pair_removed == 1)
    unrelated = np.ones(len(base), dtype=bool)
    unrelated[originals] = False
    assert not dup[: len(base)][unrelated].any()


def test_semdedup_is_not_transitivity_aware():
    # a, b, c in member order: b ~ a, c ~ b, but c is not close to a.
    a = np.array([1.0, 0.0])
    b = np.array([np.cos(0.1), np.sin(0.1)])
    c = np.array([np.cos(0.2), np.sin(0.2)])
    x = np.stack([a, b, c]).astype(np.float32)
    eps = 1 - np.cos(0.15)  # similar iff angle < 0.15
    res = semdedup(x, np.zeros(3, dtype=np.int64), eps, distance=np.array([0.3, 0.2, 0.1]))
    # b goes (close to a); c goes too, because it is close to b, even though b was removed
    np.testing.assert_array_equal(res.duplicates[eps], [False, True, True])
    assert res.keep_fraction(eps) == pytest.approx(1 / 3)
    np.testing.assert_array_equal(res[eps], res.duplicates[eps])


def test_semdedup_without_distance_uses_cluster_means():
    rng = np.random.default_rng(6)
    x, _ = _mixture(rng, n_per=40, k=3)
    assignment, distance = spherical_kmeans(x, 3, seed=0)
    means = class_prototype_distance(x, assignment)
    a = semdedup(x, assignment, 0.2)
    b = semdedup(x, assignment, 0.2, distance=means)
    np.testing.assert_array_equal(a.max_similarity, b.max_similarity)
    assert distance.shape == (len(x),)


def test_semdedup_cluster_size_cap_splits_in_member_order():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((50, 8)).astype(np.float32)
    dist = rng.random(50)
    one = np.zeros(50, dtype=np.int64)
    capped = semdedup(x, one, 0.5, distance=dist, max_cluster_size=20)
    order = np.argsort(-dist, kind="stable")
    pieces = np.empty(50, dtype=np.int64)
    pieces[order] = np.arange(50) // 20
    split = semdedup(x, pieces, 0.5, distance=dist)
    np.testing.assert_allclose(capped.max_similarity, split.max_similarity)
    uncapped = semdedup(x, one, 0.5, distance=dist)
    assert np.isfinite(uncapped.max_similarity).sum() == 49
    assert np.isfinite(capped.max_similarity).sum() == 47  # one first member per piece


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"eps": 0.0}, ValueError, r"\(0, 1\), got 0.0"),
        ({"eps": [0.1, 1.5]}, ValueError, "1.5"),
        ({"keep": "first"}, ValueError, "first"),
        ({"distance": np.zeros(3)}, ValueError, "distance must be"),
        ({"assignment": np.zeros(3, dtype=np.int64)}, ValueError, "N=4"),
        ({"keep": "random", "rng": None}, TypeError, "Generator"),
        ({"embeddings": np.zeros((4, 2), dtype=np.int32)}, TypeError, "int32"),
        ({"embeddings": np.zeros((0, 2), dtype=np.float32)}, ValueError, "non-empty"),
    ],
)
def test_semdedup_bad_input(kwargs, error, match):
    args = {
        "embeddings": np.eye(4, dtype=np.float32),
        "assignment": np.zeros(4, dtype=np.int64),
        "eps": 0.1,
        "distance": np.zeros(4),
    }
    args.update(kwargs)
    with pytest.raises(error, match=match):
        semdedup(**args)


def test_kmeans_bad_k():
    with pytest.raises(ValueError, match=r"k must be .* N=4\], got 5"):
        spherical_kmeans(np.eye(4, dtype=np.float32), 5)
