"""TorchRegressor: the learner of a regression task (:mod:`al.tasks`), a :class:`~al.learner.TorchLearner` whose
model outputs one number per sample, the predicted mean.

Training: the same fixed schedule and early-stopping options as classification, with the mean squared error on
*standardised* targets: each ``fit`` subtracts the labelled targets' mean and divides by their standard deviation
(kept as ``y_mean_``, ``y_std_``; a constant target gets std 1), so that one learning rate and one divergence rule
serve targets of any scale. Every prediction and metric is in the target's own units. Early stopping keeps the
epoch of the lowest validation MSE.

Evaluation (:meth:`TorchRegressor.evaluate`): the RMSE of the mean prediction (dropout off), and the Gaussian
negative log-likelihood (nats per sample, mean over the test set) of the test targets under
``N(mean(x), s2(x))`` with ``s2(x) = noise_var_ + var_mc(x)``: ``noise_var_`` is a homoscedastic noise
variance, the mean squared training residual of the fitted model (on the labelled set it was trained on, so an
optimistic one), and ``var_mc(x)`` the MC-dropout variance of the predicted mean over ``mc_samples`` passes (the
model's epistemic part; seeded by the round's training seed, so a resumed round evaluates the same). The variance
is floored at ``1e-6 * y_std_**2``.

MC dropout (:meth:`mc_predict`, strategy ``mc-variance``): ``(T, n)`` predicted means, one row per pass, through the
same code as the classifier's MC-dropout probabilities (only dropout layers stochastic, the trunk run once).

References: Gal & Ghahramani, "Dropout as a Bayesian Approximation" (ICML 2016) for the MC-dropout predictive
variance; Nix & Weigend (ICNN 1994) for the Gaussian likelihood of a mean and a variance.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F

from .errors import ConfigError, IncompatibleStrategyError
from .inputs import Inputs, LazyInputs
from .learner import ArrayLike, TorchLearner, fit_inputs
from .seeding import round_rng

#: The smallest predictive variance, relative to the labelled targets' variance (no zero variances in the NLL).
MIN_VARIANCE = 1e-6


class TorchRegressor(TorchLearner):
    """A regression model trained with Adam on the labelled set's standardised targets (see the module docstring).

    Takes :class:`~al.learner.TorchLearner`'s settings; ``n_classes`` is the model's output width and must be 1
    (one predicted mean). ``mc_samples``: MC-dropout passes behind the NLL's epistemic variance (0: the
    homoscedastic noise variance alone; a model without dropout also gets that).
    """

    def __init__(self, *args, mc_samples: int = 20, **kwargs) -> None:  # noqa: ANN002, ANN003 - TorchLearner's
        super().__init__(*args, **kwargs)
        self.mc_samples = mc_samples

    # --- training -----------------------------------------------------------------------------------------------
    def _training_targets(self, y: ArrayLike) -> torch.Tensor:
        yv = np.asarray(y, dtype=np.float64)
        if yv.ndim != 1:
            raise ConfigError(f"a regression target must be one number per sample, got shape {yv.shape}")
        if not np.isfinite(yv).all():
            raise ConfigError(f"{int((~np.isfinite(yv)).sum())} regression targets are NaN or infinite; give numbers")
        std = float(yv.std())
        self.y_mean_, self.y_std_ = float(yv.mean()), std if std > 0 else 1.0
        self.train_y_ = yv
        return torch.as_tensor((yv - self.y_mean_) / self.y_std_, dtype=torch.float32)

    def _loss(self, out: torch.Tensor, yt: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(out.reshape(len(out)), yt)

    def _chance_loss(self) -> tuple[float, str]:
        return 1.0, "predicting the mean target"  # the MSE of a constant guess on standardised targets

    def _validation_score(self, out: torch.Tensor, yt: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The lower validation MSE (standardised units) is the better; the history holds (RMSE, MSE) in the
        target's units."""
        mse = float(F.mse_loss(out.double().reshape(len(out)), yt.double()))
        return (-mse,), (math.sqrt(mse) * self.y_std_, mse * self.y_std_**2)

    def _mc_output(self, out: torch.Tensor) -> torch.Tensor:
        return out.double().reshape(len(out), 1) * self.y_std_ + self.y_mean_

    def fit(
        self,
        X: ArrayLike | LazyInputs,
        y: ArrayLike,
        seed: int | None = None,
        val: tuple[ArrayLike | LazyInputs, ArrayLike] | None = None,
    ) -> TorchRegressor:
        """Train on ``X: (n, ...)``, ``y: (n,)`` numbers; then fit the homoscedastic noise variance
        (``noise_var_``, the mean squared training residual in the target's units). A given validation set
        (``val``, the classifier's held-out early stopping) is not supported yet."""
        if val is not None:
            raise ConfigError("a held-out validation set (--val-held-out) is for classification runs; drop it")
        super().fit(X, y, seed)
        self.fit_seed_ = self.seed if seed is None else seed
        x = fit_inputs(X)
        resid = self.predict(x) - self.train_y_
        self.noise_var_ = float(np.mean(resid**2))
        return self

    # --- prediction ---------------------------------------------------------------------------------------------
    def predict(self, X: Inputs) -> np.ndarray:
        """Predicted means ``(n,)`` float64 in the target's units (dropout off); ModelError when not finite."""
        out = self.logits(X)
        self.check_finite(out, "inputs")
        return out.double().reshape(len(out)).numpy() * self.y_std_ + self.y_mean_

    def predict_proba(self, X: Inputs) -> np.ndarray:
        raise IncompatibleStrategyError(
            "this strategy needs class probabilities, but a regression model predicts a number; pick a strategy "
            "for regression"
        )

    def mc_predict_proba(self, X: Inputs, n_samples: int = 20, seed: int = 0) -> np.ndarray:
        raise IncompatibleStrategyError(
            "this strategy needs MC-dropout class probabilities, but a regression model predicts a number; use "
            "mc-variance (the MC-dropout variance of the predicted mean)"
        )

    def mc_predict(self, X: Inputs, n_samples: int = 20, seed: int = 0) -> np.ndarray:
        """MC-dropout predicted means, ``(n_samples, n)`` float64 in the target's units (see
        :meth:`TorchLearner.mc_predict_proba` for the order and the seeding)."""
        return super().mc_predict_proba(X, n_samples, seed)[:, :, 0]

    def predictive_variance(self, X: Inputs, seed: int = 0) -> np.ndarray:
        """``(n,)`` the NLL's variance: ``noise_var_`` plus the MC-dropout variance of the mean (module
        docstring), floored at ``MIN_VARIANCE * y_std_**2``."""
        var = np.full(self._rows(X), self.noise_var_, dtype=np.float64)
        if self.mc_samples > 0 and self.has_dropout:
            var += self.mc_predict(X, self.mc_samples, seed).var(axis=0)
        return np.maximum(var, MIN_VARIANCE * self.y_std_**2)

    def _rows(self, X: Inputs) -> int:
        return len(X)  # type: ignore[arg-type]

    def evaluate(self, X: Inputs, y: ArrayLike) -> dict[str, float]:
        """``{"rmse", "nll"}`` on ``X: (n, ...)``, ``y: (n,)`` numbers, in the target's units (module docstring).
        The MC passes are seeded by the last ``fit``'s seed, so evaluating a round's model again gives the same."""
        mean = self.predict(X)
        yv = np.asarray(y, dtype=np.float64)
        if len(yv) != len(mean):
            raise ConfigError(f"evaluate got {len(mean)} inputs but {len(yv)} targets")
        seed = int(round_rng(getattr(self, "fit_seed_", self.seed), 0, "eval-mc").integers(2**62))
        var = self.predictive_variance(X, seed)
        nll = 0.5 * (np.log(2 * math.pi * var) + (yv - mean) ** 2 / var)
        return {"rmse": float(np.sqrt(np.mean((yv - mean) ** 2))), "nll": float(nll.mean())}
