"""Diversity-based batch acquisition: core-set (greedy k-center) and BADGE.

Both work in an embedding space: core-set on the penultimate-layer features, BADGE on last-layer gradient
embeddings built from the same features and the predicted probabilities.

References: Sener & Savarese, "Active Learning for Convolutional Neural Networks: A Core-Set Approach"
(ICLR 2018); Ash et al., "Deep Batch Active Learning by Diverse, Uncertain Gradient Lower Bounds" (ICLR 2020);
Arthur & Vassilvitskii, "k-means++: The Advantages of Careful Seeding" (SODA 2007).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from al.errors import ConfigError, IncompatibleStrategyError
from al.settings import Setting
from al.strategy import Context, Selection, Strategy
from al.tasks import TASKS

if TYPE_CHECKING:
    from al.learner import TorchLearner

#: BADGE's k-means++ seedings: Ash et al.'s (the default) and scikit-learn's greedy one (runs stored before).
SEEDINGS: tuple[str, ...] = ("published", "greedy")


def _as_2d(x: np.ndarray, what: str, d: int | None = None) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 2 or (d is not None and a.shape[1] != d):
        raise ConfigError(
            f"{what} must have shape (n, {d if d is not None else 'd'}), got {a.shape}; flatten the "
            f"features of each sample into one row"
        )
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float32)
    return a


def sq_dist_tolerance(d: int) -> float:
    """Relative tolerance of a squared distance computed as ``||x||^2 - 2 x.c + ||c||^2`` in float64.

    Each of the three terms is a sum of ``d`` products, so the computed value is off by at most
    ``(2d + 4) * eps * (||x||^2 + ||c||^2)`` (the standard bound ``d * eps`` on a dot product's rounding error,
    with ``|2 x.c| <= ||x||^2 + ||c||^2``, plus the two additions). Below that the expansion cannot tell ``x`` from
    ``c``, so :func:`sq_distances` reports 0 there: an exact copy of a centre is then at distance exactly 0 (not
    ~1e-7, which made ties among copies follow rounding noise instead of ids). For d = 1,280 (BADGE on 10 classes x
    128 features) this is 5.7e-13 of the squared norms: points within ~1e-6 of the norms of each other count as
    copies. Measured on unit-scale float32 data the actual error stays below a twentieth of the bound.
    """
    return (2 * d + 4) * float(np.finfo(np.float64).eps)


def sq_distances(x: np.ndarray, x_sq: np.ndarray, c: np.ndarray, c_sq: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances by the expansion, with rounding noise set to exactly 0.

    x: (N, d) float64, x_sq: (N,) its squared norms; c: (d,) one centre or (L, d) centres, c_sq: () or (L,) theirs.
    Returns (N,) or (N, L) float64, >= 0. Values within :func:`sq_dist_tolerance` of 0, relative to
    ``||x||^2 + ||c||^2``, are exactly 0; so are the negative values the expansion can round to.
    """
    if c.ndim == 1:
        d2 = x_sq - 2.0 * (x @ c) + c_sq
        scale = x_sq + c_sq
    else:
        d2 = x_sq[:, None] - 2.0 * (x @ c.T) + c_sq[None, :]
        scale = x_sq[:, None] + c_sq[None, :]
    d2[d2 <= sq_dist_tolerance(x.shape[1]) * scale] = 0.0
    return d2


def kcenter_greedy(
    embeddings: np.ndarray,
    centres: np.ndarray,
    n: int,
    *,
    ids: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    chunk_bytes: int = 64 * 2**20,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy k-center: repeatedly pick the candidate farthest from every centre, then make it a centre.

    embeddings: (N, d) candidates. centres: (L, d) initial centres (the labelled set; L may be 0).
    ids: (N,) used to break distance ties (smaller id first); default ``arange(N)``.
    Returns (positions (n,) int64 into the N axis, distance of each pick to its nearest centre when picked).

    Memory O(N*d): a float64 copy of the embeddings, one running squared min-distance vector of length N;
    the initial distances to the L centres are computed in blocks of at most ``chunk_bytes`` bytes, and each
    pick costs one matrix-vector product. No N x N (or N x L) matrix is ever built. With no initial centre, the
    first pick is drawn uniformly with ``rng`` (required then).

    Distances within rounding of 0 (see :func:`sq_dist_tolerance`: below ``(2d + 4) * eps`` of the squared
    norms) are exactly 0, so exact copies of a centre tie exactly. A picked candidate is never picked again, even
    when all that is left are such copies (distance 0): the remaining picks then go to the smallest ids among
    them.

    References: Sener & Savarese (ICLR 2018), algorithm 1 (k-Center-Greedy); Gonzalez (1985).
    """
    # float64: the expansion below loses ~eps * ||x||^2 to cancellation, which in float32 put exact copies of a
    # centre at distance ~1e-3 instead of 0 on unit-scale data, above some genuinely close distinct points.
    x = _as_2d(embeddings, "embeddings").astype(np.float64, copy=False)
    N, d = x.shape
    c = _as_2d(centres, "centres", d).astype(np.float64, copy=False) if len(centres) else np.empty((0, d))
    if not 1 <= n <= N:
        raise ConfigError(f"cannot pick {n} of {N} candidates; 1 <= n <= number of candidates")
    ids = np.arange(N, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2: matrix products instead of an (N, L, d) difference tensor.
    x_sq = np.einsum("ij,ij->i", x, x)
    min_d2 = np.full(N, np.inf, dtype=x.dtype)
    block = max(1, int(chunk_bytes // (x.itemsize * N)))
    for s in range(0, len(c), block):
        cb = c[s : s + block]
        d2 = sq_distances(x, x_sq, cb, np.einsum("ij,ij->i", cb, cb))
        np.minimum(min_d2, d2.min(axis=1), out=min_d2)
        del d2

    available = np.ones(N, dtype=bool)
    picks = np.empty(n, dtype=np.int64)
    dists = np.empty(n)
    for k in range(n):
        if k == 0 and len(c) == 0:
            if rng is None:
                raise ConfigError("k-center with no initial centre needs rng to draw the first one")
            i = int(rng.integers(N))
        else:
            masked = np.where(available, min_d2, -np.inf)
            top = np.flatnonzero(masked == masked.max())
            i = int(top[np.argmin(ids[top])])
        picks[k] = i
        dists[k] = float(np.sqrt(min_d2[i])) if np.isfinite(min_d2[i]) else np.inf
        available[i] = False
        # one matrix-vector product per pick: measured faster with numpy than with torch on this CPU
        np.minimum(min_d2, sq_distances(x, x_sq, x[i], x_sq[i]), out=min_d2)
    return picks, dists


def gradient_embeddings(probs: np.ndarray, features: np.ndarray) -> np.ndarray:
    """BADGE's gradient embedding of each sample: the gradient of the cross-entropy loss at the predicted label
    with respect to the last Linear layer's weights, flattened.

    For logits W h + b and softmax p, d CE(yhat) / dW = (p - onehot(yhat)) h^T; the gradient is taken with
    the label the model predicts because the true one is unknown. Its norm is large for uncertain samples
    (p far from one-hot) and its direction encodes the features, so k-means++ on it trades uncertainty
    against diversity. The bias gradient is left out, as in the paper.

    probs: (N, C) softmax of the last layer, features: (N, d) its input -> (N, C*d) float32.
    References: Ash et al. (ICLR 2020), section 3.
    """
    p = _as_2d(probs, "probs")
    h = _as_2d(features, "features")
    if len(p) != len(h):
        raise ConfigError(f"probs has {len(p)} rows but features has {len(h)}; both must cover the same samples")
    g = p.astype(np.float32, copy=True)
    g[np.arange(len(g)), p.argmax(axis=1)] -= 1.0
    return (g[:, :, None] * h.astype(np.float32, copy=False)[:, None, :]).reshape(len(g), -1)


def kmeans_pp_published(x: np.ndarray, n: int, rng: np.random.Generator, ids: np.ndarray | None = None) -> np.ndarray:
    """k-means++ seeding as BADGE's authors wrote it: n distinct positions into ``x``.

    x: (N, D). The first centre is the row of largest norm (for gradient embeddings: the most uncertain sample;
    ties: the smaller id). Each next centre is drawn with probability D^2 / sum D^2, where D is a row's distance to
    its nearest centre so far: one draw per step (no best-of-several candidates), one ``rng.random()`` each, over
    the rows in id order (so that the same generator picks the same ids whatever the order of the pool).
    Squared distances within rounding of 0 are exactly 0 (see :func:`sq_dist_tolerance`), so a picked row or an
    exact copy of one is never drawn. Once every unpicked row lies on a centre (all D^2 = 0: a pool of repeated
    points), the remaining picks are the unpicked rows of largest norm, ties by the smaller id.

    Memory O(N*D) for a float64 copy of ``x`` plus O(N); each step costs one matrix-vector product.

    References: Ash et al. (ICLR 2020), section 3 and their code's ``init_centers``; Arthur & Vassilvitskii
    (SODA 2007).
    """
    # Written here, not sklearn.cluster.kmeans_plusplus: that draws the first centre uniformly, with no way to fix
    # it at the largest norm (n_local_trials=1 would otherwise be this rule). Measured in
    # benchmarks/results/badge_seeding.md: 19 ms against scikit-learn's greedy 413 ms for 20 picks of 2,000 x 160.
    a = _as_2d(x, "x").astype(np.float64, copy=False)
    N = len(a)
    if not 1 <= n <= N:
        raise ConfigError(f"cannot pick {n} of {N} candidates; 1 <= n <= number of candidates")
    ids = np.arange(N, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    a_sq = np.einsum("ij,ij->i", a, a)
    top = np.flatnonzero(a_sq == a_sq.max())
    i = int(top[np.argmin(ids[top])])
    picks = [i]
    available = np.ones(N, dtype=bool)
    available[i] = False
    min_d2 = sq_distances(a, a_sq, a[i], a_sq[i])
    by_id = np.argsort(ids, kind="stable")  # draws walk the rows in id order: picks do not depend on pool order
    while len(picks) < n:
        min_d2[~available] = 0.0
        weights = min_d2[by_id]
        cum = np.cumsum(weights)
        total = float(cum[-1])
        if not total > 0:  # every unpicked row lies on a centre: D^2 says nothing more
            rest = np.flatnonzero(available)
            picks += [int(j) for j in rest[np.lexsort((ids[rest], -a_sq[rest]))][: n - len(picks)]]
            break
        # the first row whose cumulative weight exceeds u: rows of weight 0 can never be it
        k = int(np.searchsorted(cum, rng.random() * total, side="right"))
        if k >= N:  # u * total rounded up to total
            k = int(np.flatnonzero(weights)[-1])
        i = int(by_id[k])
        picks.append(i)
        available[i] = False
        np.minimum(min_d2, sq_distances(a, a_sq, a[i], a_sq[i]), out=min_d2)
    return np.asarray(picks, dtype=np.int64)


def kmeans_pp_unique(x: np.ndarray, n: int, rng: np.random.Generator, ids: np.ndarray | None = None) -> np.ndarray:
    """k-means++ seeding (scikit-learn's, greedy variant) returning n distinct positions into ``x``.

    x: (N, D). The first centre is uniform over the rows; each next one is the best (lowest potential) of
    2 + log k candidates drawn by D^2. This is BADGE's ``seeding="greedy"``, what runs stored before the published
    seeding (:func:`kmeans_pp_published`) was added used; it favours dense regions over the large-norm rows
    (benchmarks/results/badge_seeding.md).

    scikit-learn's sampling can return the same row twice once every remaining point lies on a
    centre (all D^2 = 0: a pool of repeated points) or through a rounding edge in its cumulative sums; repeats
    are dropped and the missing picks filled with the unpicked rows of largest norm (for gradient embeddings:
    the most uncertain), ties by the smaller id.

    References: Arthur & Vassilvitskii (SODA 2007); scikit-learn ``sklearn.cluster.kmeans_plusplus``.
    """
    from sklearn.cluster import kmeans_plusplus

    N = len(x)
    if not 1 <= n <= N:
        raise ConfigError(f"cannot pick {n} of {N} candidates; 1 <= n <= number of candidates")
    ids = np.arange(N, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    _, idx = kmeans_plusplus(x, n_clusters=n, random_state=int(rng.integers(2**31 - 1)))
    _, first = np.unique(idx, return_index=True)
    picks = list(idx[np.sort(first)])
    if len(picks) < n:
        norms = np.einsum("ij,ij->i", x, x).astype(np.float64)
        norms[picks] = -np.inf
        order = np.lexsort((ids, -norms))
        picks += list(order[: n - len(picks)])
    return np.asarray(picks, dtype=np.int64)


class CoreSet(Strategy):
    """Greedy k-center on penultimate-layer embeddings with the labelled set as initial centres.

    Scores are each pick's distance to its nearest centre at the time it was picked (decreasing). Applies to
    regression too: the embeddings are the input of the regression model's last layer.
    References: Sener & Savarese (ICLR 2018).
    """

    name = "coreset"
    needs = frozenset({"embeddings", "labelled_embeddings"})
    scores_are_uncertainty = False
    tasks = frozenset(TASKS)

    def select(self, ctx: Context, n: int, rng: np.random.Generator) -> Selection:
        centres = ctx.labelled_embeddings if len(ctx.labelled) else np.empty((0, ctx.embeddings.shape[1]))
        pos, dist = kcenter_greedy(ctx.embeddings, centres, n, ids=ctx.candidates, rng=rng)
        return Selection(ctx.candidates[pos], dist)


class BADGE(Strategy):
    """k-means++ seeding on last-layer gradient embeddings with the predicted label.

    Needs the predicted probabilities and the penultimate features (the input of the last nn.Linear); for a
    model whose output is that Linear layer's logits, they determine the gradient exactly, so no backward pass
    is run. Scores are the gradient-embedding norms of the picks.

    seeding: "published" (default): the paper's rule, the largest-norm embedding first, then one D^2-weighted
    draw per centre (:func:`kmeans_pp_published`). "greedy": scikit-learn's greedy k-means++ (a uniform first
    centre, then the best of 2 + log k D^2 draws per step; :func:`kmeans_pp_unique`), what every run stored before
    the setting existed used: such a run resumes only with ``seeding="greedy"``.

    References: Ash et al. (ICLR 2020).
    """

    name = "badge"
    needs = frozenset({"probs", "embeddings"})
    scores_are_uncertainty = False

    settings_spec: ClassVar[Mapping[str, Setting]] = {
        "seeding": Setting(
            "choice", choices=SEEDINGS, hint=" (k-means++ seeding: Ash et al.'s, or scikit-learn's greedy one)"
        ),
    }
    # Runs recorded before "seeding" existed were seeded by scikit-learn's greedy k-means++.
    params_added: ClassVar[Mapping[str, Any]] = {"seeding": "greedy"}

    def __init__(self, seeding: str = "published") -> None:
        s = self.checked_settings(seeding=seeding)
        self.seeding: str = s["seeding"]

    def check_learner(self, learner: TorchLearner) -> None:
        """Refuse models whose output is not the last nn.Linear's output (the gradient formula needs it)."""
        super().check_learner(learner)
        import torch

        from al.devices import model_device
        from al.learner import eval_mode

        net, head = learner.network, learner.last_linear()
        # drawn on the CPU (the same probe on every device), then moved to the model's device
        probe = torch.randn((2, *learner.input_shape), generator=torch.Generator().manual_seed(0))
        seen: list[torch.Tensor] = []
        hook = head.register_forward_hook(lambda m, inp, out: seen.append(out.detach()))
        try:
            with torch.no_grad(), eval_mode(net):
                out = net(probe.to(model_device(net)))
        except (RuntimeError, TypeError, IndexError, ValueError):
            return  # the model takes other inputs (token ids...): it cannot be probed with random floats here
        finally:
            hook.remove()
        if not seen or seen[-1].shape != out.shape or not torch.allclose(seen[-1], out, atol=1e-5):
            raise IncompatibleStrategyError(
                "badge builds gradient embeddings from the input of the model's last nn.Linear and the softmax of "
                "the model's output, which must be that Linear's output; this model transforms it further. Make "
                "the last nn.Linear the final layer (logits out), or use coreset"
            )

    def select(self, ctx: Context, n: int, rng: np.random.Generator) -> Selection:
        g = gradient_embeddings(ctx.probs, ctx.embeddings)
        seed = kmeans_pp_published if self.seeding == "published" else kmeans_pp_unique
        pos = seed(g, n, rng, ids=ctx.candidates)
        norms = np.sqrt(np.einsum("ij,ij->i", g[pos], g[pos]).astype(np.float64))
        return Selection(ctx.candidates[pos], norms)
