"""The REGrad-family strategies: :class:`REGrad`, its preset :class:`ExGrad`, and :class:`GradNorm`.

References: Wang & Ji, CVPR 2024 (arXiv 2404.10124); Igoe et al., arXiv 2205.10439 (2022); Huang, Geng & Li,
NeurIPS 2021.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any, ClassVar

import numpy as np
from torch import nn

from al.errors import ConfigError, IncompatibleStrategyError
from al.learner import last_linear
from al.regression import TorchRegressor
from al.settings import Setting
from al.strategy import Context, Selection, Strategy, top_n
from al.tasks import CLASSIFICATION, REGRESSION

from .regression import (
    DEFAULT_METRIC,
    DEFAULT_NOISE_VAR,
    DEFAULT_OUTPUT_WEIGHTING,
    DEFAULT_PRIOR_PRECISION,
    DEFAULT_TARGET,
    DEFAULT_VARIANCE_HEAD,
    REGRESSION_SETTINGS,
    OutputWeighting,
    RegressionMetric,
    RegressionREGradSettings,
    Target,
    VarianceHead,
)
from .scores import Inputs, gradnorm_scores, score_with
from .settings import (
    DEFAULT_AGGREGATE,
    DEFAULT_BATCH_SIZE,
    DEFAULT_CLASS_WEIGHTING,
    DEFAULT_COMBINE,
    DEFAULT_LAYER_ALPHA,
    DEFAULT_N_PERTURBATIONS,
    DEFAULT_PERTURB,
    DEFAULT_SIGMA,
    PREVIOUS_DEFAULTS,
    REGRAD_SETTINGS,
    Aggregate,
    ClassWeighting,
    Combine,
    Perturb,
    REGradSettings,
)

_SETTINGS = frozenset(f.name for f in fields(REGradSettings))

#: How a sample's perturbation noise is keyed (see :mod:`strategies.regrad.noise`); reported by ``params()`` only
#: when noise is drawn, so that runs without noise, whose scores never depended on it, resume unchanged.
NOISE_KEY = "sample-id"
# Runs recorded before "perturb" existed perturbed the inputs; runs recorded before "noise_key" existed keyed a
# sample's noise by its position among the round's candidates, so a stored perturbed run lacking it differs.
_ADDED: Mapping[str, Any] = {"perturb": "input"}
_ADDED_WITH_NOISE: Mapping[str, Any] = {**_ADDED, "noise_key": "batch-position"}

#: REGrad's settings that weigh a classifier's classes: refused by name on a regression task.
CLASSIFIER_SETTINGS = frozenset({"class_weighting", "top_k"})
#: REGrad's settings that only a regression model's scores use (see :mod:`strategies.regrad.regression`), with
#: their defaults: refused by name on a classification task. ``params()`` reports one only where it differs from its
#: default (the scores at the defaults are those every regression run made before these settings were reachable),
#: so the record of every run made before them, and of every run at their defaults, is unchanged.
REGRESSOR_DEFAULTS: Mapping[str, Any] = {
    "target": DEFAULT_TARGET,
    "variance_head": DEFAULT_VARIANCE_HEAD,
    "noise_var": DEFAULT_NOISE_VAR,
    "output_weighting": DEFAULT_OUTPUT_WEIGHTING,
    "metric": DEFAULT_METRIC,
    "prior_precision": DEFAULT_PRIOR_PRECISION,
}
REGRESSOR_SETTINGS = frozenset(REGRESSOR_DEFAULTS)
_DEFAULTS = REGradSettings()
#: The module that holds REGrad for regression models (``regression_regrad_scores(model, inputs, **settings)``).
REGRESSION_MODULE = f"{__package__}.regression"


def regression_scores_function() -> Callable[..., np.ndarray] | None:
    """``regression_regrad_scores`` of :data:`REGRESSION_MODULE` when this install has it, else None (then REGrad
    refuses a regression task with a "not yet"). An error inside that module is not hidden."""
    import importlib

    try:
        module = importlib.import_module(REGRESSION_MODULE)
    except ModuleNotFoundError as e:
        if e.name != REGRESSION_MODULE:
            raise
        return None
    fn = getattr(module, "regression_regrad_scores", None)
    return fn if callable(fn) else None


def _regression_values(settings: REGradSettings, regressor: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of a regression round's ``regression_regrad_scores`` call: the shared ones where they differ
    from REGrad's defaults (the others keep that function's own defaults, such as its layer_alpha 0) and the
    regression-only ones (``regressor``, checked already) where they differ from theirs."""
    values = {
        f.name: getattr(settings, f.name)
        for f in fields(settings)
        if f.name not in CLASSIFIER_SETTINGS and getattr(settings, f.name) != getattr(_DEFAULTS, f.name)
    }
    values.update({k: v for k, v in regressor.items() if v != REGRESSOR_DEFAULTS[k]})
    return values


def _with_defaults(init: Callable[..., None], preset: Mapping[str, Any], owner: type) -> Callable[..., None]:
    """A copy of ``init`` (same code, same parameter names) whose defaults are replaced by ``preset``.

    The copy has no ``__wrapped__``, so ``inspect.signature`` (the registry's keyword check, ``Strategy.params``,
    ``help()``) shows the preset's defaults and exactly ``init``'s parameters.
    """
    sig = inspect.signature(init)
    unknown = sorted(set(preset) - set(sig.parameters))
    if unknown:
        raise TypeError(f"{owner.__name__}.preset names {unknown}, which are not settings of {init.__qualname__}")
    params = [p for p in sig.parameters.values() if p.default is not p.empty]
    values = {p.name: preset.get(p.name, p.default) for p in params}
    # a bad preset fails at import
    REGradSettings(**{k: v for k, v in values.items() if k in _SETTINGS})
    RegressionREGradSettings(**{k: v for k, v in values.items() if k in REGRESSOR_SETTINGS})
    func = types.FunctionType(
        init.__code__,
        init.__globals__,
        init.__name__,
        tuple(preset.get(p.name, p.default) for p in params),
        init.__closure__,
    )
    func.__annotations__ = dict(init.__annotations__)
    func.__doc__ = init.__doc__
    func.__module__ = owner.__module__
    func.__qualname__ = f"{owner.__qualname__}.__init__"
    return func


class REGrad(Strategy):
    """Acquire the highest REGrad epistemic uncertainty. Every setting of :func:`regrad_scores` is a keyword here,
    held in one frozen :class:`REGradSettings` (``self.settings``; each is also readable as an attribute).

    ``select`` draws one key from the round's ``rng`` (only when noise is drawn) and keys each candidate's input
    noise by its global sample id, so a candidate's score does not depend on the other candidates. ``seed`` stays a
    setting: an extra salt in every noise seed.

    A subclass that sets ``preset`` (a mapping of settings to new defaults) is a preset of REGrad: its constructor
    takes exactly REGrad's keywords, with those defaults (see :class:`ExGrad`).

    On a regression task (``ctx.task``) the scores come from ``regression_regrad_scores`` of
    :data:`REGRESSION_MODULE` (:meth:`regression_scores`): the settings the two share (layer_alpha, the
    perturbations, combine, seed, batch_size, last_layer_only) are passed where they differ from REGrad's
    defaults, the others keep that function's own defaults; class_weighting and top_k weigh classes and are
    refused by name (:data:`CLASSIFIER_SETTINGS`). The regression-only settings (target, variance_head,
    noise_var, output_weighting, metric, prior_precision: :data:`REGRESSOR_DEFAULTS`) are passed where they
    differ from their defaults and refused by name on a classification task; ``self.for_regression`` holds the
    :class:`~strategies.regrad.regression.RegressionREGradSettings` a regression round scores with.
    ``metric="kfac-laplace"`` fits its Laplace posterior to the round's labelled inputs (``ctx.labelled_inputs``,
    the data the model was trained on). Without that module a regression task is refused with a "not yet"
    (:meth:`unavailable_for`).

    References: Wang & Ji, CVPR 2024 (arXiv 2404.10124).
    """

    name = "regrad"
    # labelled_inputs: read only by metric="kfac-laplace" on a regression task (the context reads it lazily)
    needs = frozenset({"model", "inputs", "labelled_inputs"})
    tasks = frozenset({CLASSIFICATION, REGRESSION})
    classification_settings = CLASSIFIER_SETTINGS
    regression_settings = REGRESSOR_SETTINGS
    #: defaults that differ from REGrad's, for a preset subclass
    preset: ClassVar[Mapping[str, Any]] = {}
    #: issue 17 changed the class weighting and layer alpha defaults: a run stored under the old ones keeps them
    previous_defaults: ClassVar[Mapping[str, Any]] = PREVIOUS_DEFAULTS
    #: checked by REGradSettings (the same checks serve regrad_scores called on its own)
    settings_spec: ClassVar[Mapping[str, Setting]] = {
        **REGRAD_SETTINGS,
        **{k: REGRESSION_SETTINGS[k] for k in REGRESSOR_DEFAULTS},
    }

    def __init__(
        self,
        class_weighting: ClassWeighting = DEFAULT_CLASS_WEIGHTING,
        layer_alpha: float = DEFAULT_LAYER_ALPHA,
        n_perturbations: int = DEFAULT_N_PERTURBATIONS,
        sigma: float = DEFAULT_SIGMA,
        aggregate: Aggregate = DEFAULT_AGGREGATE,
        combine: Combine = DEFAULT_COMBINE,
        top_k: int | None = None,
        seed: int = 0,
        batch_size: int = DEFAULT_BATCH_SIZE,
        last_layer_only: bool = False,
        perturb: Perturb = DEFAULT_PERTURB,
        target: Target = DEFAULT_TARGET,
        variance_head: VarianceHead = DEFAULT_VARIANCE_HEAD,
        noise_var: float = DEFAULT_NOISE_VAR,
        output_weighting: OutputWeighting = DEFAULT_OUTPUT_WEIGHTING,
        metric: RegressionMetric = DEFAULT_METRIC,
        prior_precision: float = DEFAULT_PRIOR_PRECISION,
    ) -> None:
        with self.naming_errors():  # "strategy 'regrad': layer_alpha must be a number, ..."
            self.settings = REGradSettings(
                class_weighting,
                layer_alpha,
                n_perturbations,
                sigma,
                aggregate,
                combine,
                top_k,
                seed,
                batch_size,
                last_layer_only,
                perturb,
            )
            # checked (and normalised: noise_var=2 -> 2.0) by the regression family's own declarations
            regressor = RegressionREGradSettings(
                target=target,
                variance_head=variance_head,
                noise_var=noise_var,
                output_weighting=output_weighting,
                metric=metric,
                prior_precision=prior_precision,
            )
            self.for_regression = RegressionREGradSettings(
                **_regression_values(self.settings, {k: getattr(regressor, k) for k in REGRESSOR_SETTINGS})
            )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "preset" in vars(cls) and "__init__" not in vars(cls):
            cls.__init__ = _with_defaults(REGrad.__init__, cls.preset, cls)  # type: ignore[method-assign]

    def __getattr__(self, name: str) -> Any:
        # only called when normal lookup fails: the settings read as attributes (Strategy.params, user code)
        settings = self.__dict__.get("settings")
        if settings is not None and name in _SETTINGS:
            return getattr(settings, name)
        regressor = self.__dict__.get("for_regression")
        if regressor is not None and name in REGRESSOR_SETTINGS:
            return getattr(regressor, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SETTINGS or name in REGRESSOR_SETTINGS:
            raise AttributeError(
                f"{type(self).__name__} settings are fixed at construction; build a new strategy "
                f"with {name}={value!r} instead"
            )
        super().__setattr__(name, value)

    @property
    def params_added(self) -> Mapping[str, Any]:  # type: ignore[override]
        """Settings added after runs were stored, with the value such a run used (see ``Strategy.params_added``).
        ``noise_key`` is declared only when this strategy draws noise, the only case that reports it."""
        return _ADDED_WITH_NOISE if self.settings.draws_noise else _ADDED

    def params(self) -> dict[str, Any]:
        p = super().params()
        for k, default in REGRESSOR_DEFAULTS.items():
            if p[k] == default:
                del p[k]  # see REGRESSOR_DEFAULTS: the record of a run at this default is the one made before it
        if self.settings.draws_noise:
            p["noise_key"] = NOISE_KEY
        return p

    def scores(
        self, model: nn.Module, inputs: Inputs, *, ids: np.ndarray | None = None, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        """U(x), ``(N,)``, with this strategy's settings (see :func:`regrad_scores` for ``ids`` and ``rng``)."""
        return score_with(self.settings, model, inputs, ids=ids, rng=rng)

    @classmethod
    def unavailable_for(cls, task: str) -> str | None:
        if task == REGRESSION and regression_scores_function() is None:
            return f"REGrad for regression models ({REGRESSION_MODULE}.regression_regrad_scores) is not in this install"
        return None

    def regression_scores(
        self,
        model: nn.Module,
        inputs: Inputs,
        *,
        reference: Inputs | None = None,
        ids: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """U(x), ``(N,)``, of a regression model, by ``regression_regrad_scores`` (see the class docstring).
        reference: the inputs metric="kfac-laplace" fits its posterior to (the training inputs), as ``inputs``."""
        fn = regression_scores_function()
        if fn is None:
            why = self.unavailable_for(REGRESSION)
            raise ConfigError(f"strategy {self.name!r} on a regression task: not yet: {why}")
        accepted = inspect.signature(fn).parameters
        settings = _regression_values(self.settings, {k: getattr(self, k) for k in REGRESSOR_SETTINGS})
        dropped = sorted(k for k in settings if k not in accepted)
        if dropped:  # a setting given must change the scores, never be left out unnoticed
            raise ConfigError(
                f"strategy {self.name!r}: {REGRESSION_MODULE}.regression_regrad_scores of this install takes no "
                f"{', '.join(dropped)}; drop {'it' if len(dropped) == 1 else 'them'} from --strategy-kwargs"
            )
        per_call = {
            k: v for k, v in (("reference", reference), ("ids", ids), ("rng", rng)) if k in accepted and v is not None
        }
        return np.asarray(fn(model, inputs, **settings, **per_call), dtype=np.float64)

    def check_learner(self, learner: Any) -> None:
        super().check_learner(learner)
        regressor = isinstance(learner, TorchRegressor)
        given = [k for k, default in REGRESSOR_DEFAULTS.items() if getattr(self, k) != default]
        if given and not regressor:  # a strategy object built with them (a name is refused by check_strategy_task)
            raise IncompatibleStrategyError(
                f"strategy {self.name!r}: {', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to regression "
                f"models only, but the learner is a classifier; build the strategy without "
                f"{'it' if len(given) == 1 else 'them'}, or run with --task regression"
            )
        if regressor and self.variance_head != DEFAULT_VARIANCE_HEAD:
            raise IncompatibleStrategyError(
                f"strategy {self.name!r}: variance_head={self.variance_head!r} needs a model that outputs a mean and a "
                f"log variance, but a regression run's model outputs one number, the mean, trained by the squared "
                f"error; use variance_head={DEFAULT_VARIANCE_HEAD!r} (target 'gaussian-nll' then takes noise_var as "
                f"the variance), or call regression_regrad_scores on a model with a variance head"
            )

    def select(self, ctx: Context, n: int, rng: np.random.Generator) -> Selection:
        if ctx.task == REGRESSION:
            # the posterior of kfac-laplace is fitted to what the model was trained on: the labelled set's inputs
            reference = ctx.labelled_inputs if self.metric == "kfac-laplace" else None
            s = self.regression_scores(ctx.model, ctx.inputs, reference=reference, ids=ctx.candidates, rng=rng)
        else:
            s = self.scores(ctx.model, ctx.inputs, ids=ctx.candidates, rng=rng)
        return top_n(s, ctx.candidates, n)


class ExGrad(REGrad):
    """Expected gradient norm: the REGrad preset class_weighting="expected", uniform layers (layer_alpha=0), no
    perturbation, mean-grad. Takes every REGrad keyword; only these defaults differ.

    References: Igoe et al., "How Useful are Gradients for OOD Detection?", arXiv 2205.10439 (2022).
    """

    name = "exgrad"
    tasks = frozenset({CLASSIFICATION})  # its preset is a class weighting
    previous_defaults: ClassVar[Mapping[str, Any]] = {}  # its preset's defaults never changed
    preset = {
        "class_weighting": "expected",
        "layer_alpha": 0.0,
        "n_perturbations": 0,
        "sigma": 0.0,
        "aggregate": "mean-grad",
    }


class GradNorm(Strategy):
    """Acquire the LOWEST GradNorm (least familiar). ``pool_scores`` hold -GradNorm, so that, as for every other
    uncertainty strategy, higher means more uncertain.

    References: Huang, Geng & Li, NeurIPS 2021.
    """

    name = "gradnorm"
    needs = frozenset({"model", "inputs"})
    settings_spec: ClassVar[Mapping[str, Setting]] = {
        "temperature": Setting("float", minimum=0.0, strict=True, example=1.0),
        "batch_size": Setting("int", minimum=1, example=1024),
    }

    def __init__(self, temperature: float = 1.0, batch_size: int = 1024) -> None:
        s = self.checked_settings(temperature=temperature, batch_size=batch_size)
        self.temperature: float = s["temperature"]
        self.batch_size: int = s["batch_size"]

    def check_learner(self, learner: Any) -> None:
        super().check_learner(learner)
        if getattr(learner, "is_fitted", False):
            last_linear(learner.network, "GradNorm")

    def select(self, ctx: Context, n: int, rng: np.random.Generator) -> Selection:
        s = gradnorm_scores(ctx.model, ctx.inputs, temperature=self.temperature, batch_size=self.batch_size)
        return top_n(-s, ctx.candidates, n)
