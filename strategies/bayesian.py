"""Bayesian acquisition on MC-dropout samples: BALD and greedy BatchBALD, and for regression the MC-dropout
variance of the predicted mean.

Both read ``ctx.mc_probs: (T, n_candidates, C)``, the softmax outputs of T stochastic forward passes in which
only dropout layers are stochastic (``TorchLearner.mc_predict_proba``; BatchNorm stays in eval mode and a model
without dropout is refused by ``Strategy.check_learner``). T is ``ExperimentConfig.mc_samples``
(``--mc-samples``, default 20).

References: Houlsby et al., "Bayesian Active Learning for Classification and Preference Learning" (2011);
Gal, Islam & Ghahramani, "Deep Bayesian Active Learning with Image Data" (ICML 2017);
Kirsch, van Amersfoort & Gal, "BatchBALD: Efficient and Diverse Batch Acquisition for Deep Bayesian Active
Learning" (NeurIPS 2019); Gal & Ghahramani, "Dropout as a Bayesian Approximation" (ICML 2016) and Tsymbalov,
Panov & Shapeev, "Dropout-based Active Learning for Regression" (AIST 2018) for the variance of the mean.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from al.errors import ConfigError
from al.settings import Setting
from al.strategy import Context, Selection, Strategy, top_n
from al.tasks import REGRESSION

#: How BatchBALD draws label configurations beyond ``max_exact_configs`` (see :func:`batchbald_select`).
SAMPLINGS: tuple[str, ...] = ("stratified", "ancestral")

#: Probabilities are clipped below at this before taking logs, so that 0 * log 0 contributes 0, not NaN.
_TINY = 1e-300


def _xlogx(p: np.ndarray) -> np.ndarray:
    """Elementwise p * log p with 0 log 0 = 0 (float64)."""
    return p * np.log(np.maximum(p, _TINY))


def _check_mc(mc_probs: np.ndarray) -> np.ndarray:
    p = np.asarray(mc_probs, dtype=np.float64)
    if p.ndim != 3:
        raise ConfigError(
            f"mc_probs must have shape (T, n, n_classes), got {p.shape}; stack the T MC-dropout "
            f"passes along the first axis"
        )
    if p.shape[0] < 1:
        raise ConfigError("mc_probs holds no MC sample; use at least one (typically 20) MC-dropout passes")
    return p


def conditional_entropy(mc_probs: np.ndarray) -> np.ndarray:
    """Expected entropy E_w H[y | x, w] = -(1/T) sum_t sum_c p_tc log p_tc, in nats.

    mc_probs: (T, N, C) -> (N,) float64.
    """
    p = _check_mc(mc_probs)
    return -_xlogx(p).sum(axis=2).mean(axis=0)


def mi_tolerance(T: int, C: int) -> float:
    """Relative rounding tolerance of :func:`mutual_information` for T MC samples of C classes.

    When all T passes are the same vector p, the mean of the passes is p up to a relative error of about T*eps, and
    the two entropies agree to first order up to ``(2T + C + 2) * eps * (1 + H)`` nats (H the predictive entropy:
    the mean's error moves each term p log p by |log p + 1| times it, and each sum of C or T terms rounds too).
    Twice that is the tolerance: measured on Dirichlet(0.5) probabilities with T in 5..50 and C in 2..100, the
    actual difference stayed below a fifteenth of the first-order bound.
    """
    return 2.0 * (2 * T + C + 2) * float(np.finfo(np.float64).eps)


def mutual_information(mc_probs: np.ndarray) -> np.ndarray:
    """BALD score: mutual information I[y; w | x] = H[E_w p(y|x,w)] - E_w H[p(y|x,w)], in nats.

    mc_probs: (T, N, C) softmax outputs of T stochastic forward passes -> (N,) float64, >= 0. Zero when all T
    passes agree; at most log C. A score within rounding of 0, i.e. at most ``mi_tolerance(T, C) * (1 + H)``
    (about 7e-14 nats for T = 20 and C = 10 at H = log 10), is set to exactly 0, so that candidates whose passes
    are identical (the model is certain about them, or dropout does not reach them) tie exactly, at 0 and not at
    ~1e-15 rounding noise, and ``top_n`` breaks the tie by the smaller id. Passes so close that their MI is below
    that differ by a few float32 ulps (softmax outputs are float32): noise, not disagreement.

    References: Houlsby et al. (2011), eq. 3; Gal, Islam & Ghahramani (2017).
    """
    p = _check_mc(mc_probs)
    T, _, C = p.shape
    mean = p.mean(axis=0)
    predictive = -_xlogx(mean).sum(axis=1)
    expected = -_xlogx(p).sum(axis=2).mean(axis=0)
    mi = predictive - expected
    mi[mi <= mi_tolerance(T, C) * (1.0 + predictive)] = 0.0  # negative rounding included
    return mi


class BALD(Strategy):
    """Top-n mutual information between the label and the weights, from MC dropout.

    Each candidate is scored on its own, so a batch of near-copies of one informative image is picked whole:
    that is the redundancy BatchBALD removes.

    References: Houlsby et al. (2011); Gal, Islam & Ghahramani (2017).
    """

    name = "bald"
    needs = frozenset({"mc_probs"})

    def select(self, ctx: Context, n: int, rng: np.random.Generator) -> Selection:
        return top_n(mutual_information(ctx.mc_probs), ctx.candidates, n)


def stratified_configurations(
    batch_probs: np.ndarray, per_sample: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Label configurations of a batch drawn in equal numbers from each MC sample, merged when identical.

    batch_probs: (T, b, C) the batch's MC probabilities. From each MC sample t, ``per_sample`` configurations are
    drawn with the b labels independent given t (y_j ~ p_t(y_j)); all T * per_sample draws together follow the
    joint predictive p(y_1..y_b) = mean_t prod_j p_t(y_j), with the choice of t stratified rather than drawn.
    Returns (labels (M, b) int64 of the M distinct configurations in lexicographic order, counts (M,) int64
    summing to T * per_sample). One ``rng.random((T, per_sample, b))`` call.

    References: Kirsch, van Amersfoort & Gal, "BatchBALD" (NeurIPS 2019), section 4 (sampling configurations
    per MC sample); batchbald_redux's ``SampledJointEntropy.sample``.
    """
    T, b, C = batch_probs.shape
    cdf = np.cumsum(batch_probs, axis=2)  # (T, b, C)
    u = rng.random((T, per_sample, b)) * cdf[:, None, :, -1]  # (T, S, b), scaled to each row's total
    # inverse CDF: the number of cumulative sums at or below u is the drawn label
    labels = (u[..., None] >= cdf[:, None, :, :]).sum(axis=3)
    np.minimum(labels, C - 1, out=labels)  # u at the very top of a row whose last classes have probability 0
    flat = labels.reshape(T * per_sample, b)
    # merge identical rows: a lexicographic sort (np.unique(axis=0) sorts void records, measured 4x slower here)
    srt = flat[np.lexsort(flat.T[::-1])]
    starts = np.flatnonzero(np.concatenate(([True], (srt[1:] != srt[:-1]).any(axis=1))))
    return srt[starts], np.diff(np.append(starts, len(srt)))


def configuration_weights(batch_probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(T, M) posterior weights x T of each configuration: prod_j p_t(y_j), normalised to mean 1 per column.

    batch_probs: (T, b, C), labels: (M, b). Computed as a sum of logs, shifted by each column's largest, so that
    no product of b probabilities underflows.
    """
    logp = np.log(np.maximum(batch_probs, _TINY))
    b = labels.shape[1]
    L = logp[:, np.arange(b)[None, :], labels].sum(axis=2)  # (T, M)
    P = np.exp(L - L.max(axis=0))
    return P / P.mean(axis=0)


def batchbald_select(
    mc_probs: np.ndarray,
    n: int,
    rng: np.random.Generator,
    *,
    ids: np.ndarray | None = None,
    max_exact_configs: int = 4096,
    num_samples: int = 1000,
    sampling: str = "stratified",
    chunk_bytes: int = 32 * 2**20,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy BatchBALD: positions of ``n`` candidates and the marginal gain of each when it was added.

    mc_probs: (T, N, C). ids: (N,) used only to break ties (smaller id first); default ``arange(N)``.
    Returns (positions (n,) int64 into the N axis, gains (n,) float64 in nats).

    Step b adds the candidate with the largest gain
    I[y_1..y_b, y_i; w] - I[y_1..y_b; w] = H[y_i | y_1..y_b] - E_w H[y_i | w].
    The batch's label configurations are kept as a (T, M) matrix of posterior weights over the T MC samples,
    one column per configuration, each column normalised to mean 1. Then
    p(y_i = c | config m) = mean_t P[t, m] p_t(y_i = c), and H[y_i | batch] = sum_m w_m H[p(y_i | config m)]
    with w_m the configuration's probability (exact: all C^b configurations while C^b <= ``max_exact_configs``)
    or its share of the draws beyond that. Normalising each column keeps the products of b probabilities from
    underflowing however large the batch, and makes a copy of an already-picked sample score H[y | batch] ~ 0
    on deterministic-per-sample models instead of a difference of two large rounded numbers. Memory:
    O(T*M + M*chunk*C) beside the input; the (M, chunk, C) joint probabilities are computed in candidate chunks
    of at most ``chunk_bytes`` bytes.

    sampling: how configurations are drawn beyond ``max_exact_configs``; identical draws are merged into one
    column with a count, so M is the number of *distinct* draws.
    - "stratified" (default; the paper's and batchbald_redux's): at every step, ``num_samples // T`` (at least 1)
      fresh configurations of the whole batch from each of the T MC samples (:func:`stratified_configurations`).
      Measured against exact joint MI (benchmarks/results/batchbald_sampling.md), its batches come closer to exact
      greedy than ancestral sampling's at the same number of configurations.
    - "ancestral": ``num_samples`` configurations drawn once from the exact joint when it outgrows
      ``max_exact_configs``, then each extended by the new label at every step (the draws carry over from step
      to step, and so do their errors). What every run stored before the setting existed used.

    Exact copies of a picked candidate (identical MC rows, i.e. the same input under the same model) are passed
    over while any other candidate remains: a labeller gives the same answer for the same input, so their true
    gain is zero. The estimate alone does not guarantee it: with finite T, once the batch's labels pin down
    which MC sample is "true", every gain is ~0 and a copy with a little residual per-sample entropy can
    outscore a fresh candidate. Gains equal to 1e-12 nats (1e-6 once configurations are sampled and computed
    in float32) are ties, broken by the smaller id.

    References: Kirsch, van Amersfoort & Gal, "BatchBALD" (NeurIPS 2019), sections 3-4.
    """
    p = _check_mc(mc_probs)
    T, N, C = p.shape
    if not 1 <= n <= N:
        raise ConfigError(f"cannot pick {n} of {N} candidates; 1 <= n <= number of candidates")
    if max_exact_configs < 1 or num_samples < 1:
        raise ConfigError(f"max_exact_configs and num_samples must be >= 1, got {max_exact_configs}, {num_samples}")
    if sampling not in SAMPLINGS:
        raise ConfigError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    ids = np.arange(N, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    cond = conditional_entropy(p)
    mi = mutual_information(p)
    flat = p.reshape(T, N * C)
    flat32: np.ndarray | None = None
    per_sample = max(1, num_samples // T)  # stratified: configurations drawn from each MC sample

    picked: list[int] = []
    gains_out: list[float] = []
    available = np.ones(N, dtype=bool)
    copy_of_picked = np.zeros(N, dtype=bool)
    P = np.ones((T, 1))  # posterior weights x T, one column per configuration of the batch
    w: np.ndarray = np.ones(1)  # weight of each configuration in H[y_i | batch]
    exact = True
    counts: np.ndarray = np.ones(1, dtype=np.int64)  # draws per distinct configuration, once sampling
    for step in range(n):
        if step == 0:
            gain = mi.copy()  # with an empty batch the gain is BALD itself: the same top pick, bit for bit
        else:
            M = P.shape[1]
            if exact:
                src, Pw = flat, P
            else:
                # Sampled configurations carry a Monte Carlo error of order 1/sqrt(M), far above float32
                # rounding, and float32 halves the time of this loop (measured: 0.047 s vs 0.095 s per
                # 1000 x 400 x 10 block).
                if flat32 is None:
                    flat32 = flat.astype(np.float32)
                src, Pw = flat32, P.astype(np.float32)
            gain = np.empty(N)
            chunk = max(1, int(chunk_bytes // (src.itemsize * M * C)))
            for s in range(0, N, chunk):
                e = min(N, s + chunk)
                J = (Pw.T @ src[:, s * C : e * C]) * (1.0 / T)  # (M, chunk*C)
                h = -(J * np.log(np.maximum(J, np.finfo(J.dtype).tiny))).reshape(M, e - s, C).sum(axis=2)
                gain[s:e] = w @ h.astype(np.float64)  # (chunk,)
            gain -= cond
        allowed = available & ~copy_of_picked
        if not allowed.any():  # only copies of picked candidates are left
            allowed = available
        key = np.round(gain, 12 if exact else 6)  # rounding noise must not decide between equal gains
        key[~allowed] = -np.inf
        top = np.flatnonzero(key == key.max())
        i = int(top[np.argmin(ids[top])])
        picked.append(i)
        gains_out.append(float(gain[i]))
        available[i] = False
        copy_of_picked |= (p == p[:, i : i + 1, :]).all(axis=(0, 2))
        if step == n - 1:
            break
        # Condition every configuration on the new label.
        pi = p[:, i, :]  # (T, C)
        if exact:
            Pn = (P[:, :, None] * pi[:, None, :]).reshape(T, -1)  # (T, M*C)
            q = Pn.mean(axis=0)
            wn = (w[:, None] * np.ones((1, C))).reshape(-1) * q  # config probabilities
            keep = q > 0
            Pn, q, wn = Pn[:, keep], q[keep], wn[keep]
            if Pn.shape[1] <= max_exact_configs:
                P, w = Pn / q, wn / wn.sum()
                continue
            exact = False
            if sampling == "ancestral":
                # Too many configurations: draw num_samples of them from the exact joint, then go on sampling.
                # Draws are kept as distinct configurations with counts: on a confident model most of the
                # num_samples draws coincide, and each distinct one costs the same in the gain loop (measured
                # side by side on 5000 x 10-class synthetic pools, 10 picks: 1.6x faster for sharp Dirichlet(0.05)
                # predictions, 1.1x for Dirichlet(0.3)).
                counts = rng.multinomial(num_samples, wn / wn.sum())
                keep = np.flatnonzero(counts)
                P, counts = Pn[:, keep] / q[keep], counts[keep]
                w = counts / num_samples
                continue
        if sampling == "stratified":
            # Fresh draws of the whole batch at every step: no error carries over from the previous picks.
            batch = p[:, picked, :]  # (T, b, C)
            labels, counts = stratified_configurations(batch, per_sample, rng)
            P, w = configuration_weights(batch, labels), counts / (T * per_sample)
        else:
            cp = (P.T @ pi) / T  # (M, C) p(y_i | config)
            cp /= cp.sum(axis=1, keepdims=True)
            # Ancestral sampling: each of a configuration's `count` draws extends it with its own label.
            ext = rng.multinomial(counts, cp)  # (M, C)
            m_idx, c_idx = np.nonzero(ext)
            P = P[:, m_idx] * pi[:, c_idx]
            P /= P.mean(axis=0)
            counts = ext[m_idx, c_idx]
            w = counts / num_samples
    return np.asarray(picked, dtype=np.int64), np.asarray(gains_out)


class BatchBALD(Strategy):
    """Greedy BatchBALD on the round's MC-dropout samples: each pick maximises the information the whole batch
    carries about the weights. A near-copy of a picked sample adds little when the model is confident for each
    weight sample; when it is not, the two labels count as independent noisy draws and the copy keeps a real
    gain (see benchmarks/results/repeated_mnist.md).

    max_exact_configs: joint entropies are exact while the batch has at most this many label configurations
    (C^b, e.g. 3 picks for 10 classes at the default). num_samples: configurations drawn beyond that.
    sampling: how they are drawn (see :func:`batchbald_select`): "stratified" (default, the paper's: an equal
    number from each MC sample, fresh at every step) or "ancestral" (drawn once, then extended label by label),
    what every run stored before the setting existed used: such a run resumes only with ``sampling="ancestral"``.

    References: Kirsch, van Amersfoort & Gal, "BatchBALD" (NeurIPS 2019).
    """

    name = "batchbald"
    needs = frozenset({"mc_probs"})

    settings_spec: ClassVar[Mapping[str, Setting]] = {
        "max_exact_configs": Setting("int", minimum=1, example=4096),
        "num_samples": Setting("int", minimum=1, example=1000),
        "sampling": Setting("choice", choices=SAMPLINGS, hint=" (label configurations beyond max_exact_configs)"),
    }
    # Runs recorded before "sampling" existed extended their drawn configurations by ancestral sampling.
    params_added: ClassVar[Mapping[str, Any]] = {"sampling": "ancestral"}

    def __init__(self, max_exact_configs: int = 4096, num_samples: int = 1000, sampling: str = "stratified") -> None:
        s = self.checked_settings(max_exact_configs=max_exact_configs, num_samples=num_samples, sampling=sampling)
        self.max_exact_configs: int = s["max_exact_configs"]
        self.num_samples: int = s["num_samples"]
        self.sampling: str = s["sampling"]

    def select(self, ctx: Context, n: int, rng: np.random.Generator) -> Selection:
        mc = ctx.mc_probs
        pos, gains = batchbald_select(
            mc,
            n,
            rng,
            ids=ctx.candidates,
            max_exact_configs=self.max_exact_configs,
            num_samples=self.num_samples,
            sampling=self.sampling,
        )
        return Selection(ctx.candidates[pos], gains, mutual_information(mc))


def predictive_variance(mc_predictions: np.ndarray) -> np.ndarray:
    """The MC-dropout variance of the predicted mean, ``(1/T) sum_t (mu_t - mean_t mu_t)^2``.

    mc_predictions: (T, N) predicted means of T passes -> (N,) float64, >= 0. A value within rounding of 0 (the
    passes agree to within ``4 T eps`` of the squared mean) is exactly 0, so that candidates whose passes agree tie
    and go by the smaller id.
    """
    m = np.asarray(mc_predictions, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] < 1:
        raise ConfigError(
            f"mc_predictions must have shape (T, n) with T >= 1 MC-dropout passes, got {m.shape}; stack the passes' "
            f"predicted means along the first axis"
        )
    var = m.var(axis=0)
    var[var <= 4 * m.shape[0] * np.finfo(np.float64).eps * m.mean(axis=0) ** 2] = 0.0
    return var


class MCVariance(Strategy):
    """Regression: acquire the largest MC-dropout variance of the predicted mean (``--mc-samples`` passes), the
    model's epistemic uncertainty about the mean (no noise term: it is the same for every candidate).

    References: Gal & Ghahramani (ICML 2016); Tsymbalov, Panov & Shapeev (AIST 2018).
    """

    name = "mc-variance"
    needs = frozenset({"mc_predictions"})
    tasks = frozenset({REGRESSION})

    def select(self, ctx: Context, n: int, rng: np.random.Generator) -> Selection:
        return top_n(predictive_variance(ctx.mc_predictions), ctx.candidates, n)
