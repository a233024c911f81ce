"""REGrad: gradient-based epistemic uncertainty for any pre-trained PyTorch classifier, plus ExGrad and GradNorm.

The score of an input x for a classifier with softmax outputs p(k|x), k = 1..C::

    g_{k,l}(x)  = grad over theta_l of log p(k|x)              (l = 1..L: modules directly owning trainable params)
    gbar_{k,l}  = mean_{m=0..M} g_{k,l}(x + sigma * eps_m)     (eps_0 = 0; "mean-grad")
    s_k         = sum_l w_l ||gbar_{k,l}||_2,   w = softmax(alpha * (l-1)/(L-1))
    U(x)        = sum_k c_k s_k,                c = class weights from p(.|x) ("root": sqrt(p)/sum sqrt(p))

``combine="squared"`` gives the second-order Bayesian form sqrt(sum_k c_k sum_l w_l ||gbar_{k,l}||^2) instead.

How it is fast: one forward pass per chunk with hooks, one backward pass per class rank, and per-sample norms from
(input, output-gradient) pairs in closed form for Linear, Conv, BatchNorm, LayerNorm and Embedding, with an exact
autograd fallback for anything else: see :mod:`.engine`. Perturbed copies are folded into the batch.

``perturb="params"`` puts the noise on the weights instead of the input (the Bayesian reading: average over
theta_m ~ N(theta, diag(sigma * std(theta_tensor))^2)); each perturbed model is scored by the same engine with
M = 0 and the per-layer norms are averaged (``mean-norm`` only). See :func:`gradient_norms`.

References: Wang & Ji, "Gradient-based Uncertainty Quantification for Pre-trained Classifiers" (REGrad), CVPR
2024, arXiv 2404.10124; Igoe et al., "How Useful are Gradients for OOD Detection?" (ExGrad), arXiv 2205.10439;
Huang, Geng & Li, "On the Importance of Gradients for Detecting Distributional Shifts in the Wild" (GradNorm),
NeurIPS 2021. The paper's exact constants are not public to us; every choice is a named parameter here and the
defaults were picked by ``benchmarks/regrad_ood.py`` (see ``benchmarks/results/regrad_ood.md``).

Regression models (no classes): :mod:`.regression` defines the family (targets "mean" and "gaussian-nll",
output weighting, the gap-aware "kfac-laplace" metric) on the same engine; see :func:`regression_regrad_scores`.

Where things are: :mod:`.settings` (REGradSettings, validated once), :mod:`.weighting` (class and layer weights),
:mod:`.noise` (perturbation noise, keyed by sample id), :mod:`.layers` / :mod:`.recorder` / :mod:`.pairs` /
:mod:`.fallback` / :mod:`.engine` (the general per-sample gradient-norm engine), :mod:`.scores`
(gradient_norms, regrad_scores, gradnorm_scores) and :mod:`.strategy` (REGrad, ExGrad, GradNorm).
"""

from __future__ import annotations

from al.inputs import iter_batches

from .engine import Engine
from .layers import Layer, discover_layers
from .noise import parameter_noise, parameter_scales, perturbation_noise, trainable_parameters
from .pairs import PAIR_RULES, PairRule
from .regression import (
    METRICS,
    OUTPUT_WEIGHTINGS,
    TARGETS,
    VARIANCE_HEADS,
    RegressionGradientNorms,
    RegressionREGradSettings,
    regression_gradient_norms,
    regression_regrad_scores,
)
from .scores import GradientNorms, gradient_norms, gradnorm_scores, regrad_scores
from .settings import (
    AGGREGATES,
    CLASS_WEIGHTINGS,
    COMBINES,
    DEFAULT_AGGREGATE,
    DEFAULT_BATCH_SIZE,
    DEFAULT_CLASS_WEIGHTING,
    DEFAULT_COMBINE,
    DEFAULT_LAYER_ALPHA,
    DEFAULT_N_PERTURBATIONS,
    DEFAULT_PERTURB,
    DEFAULT_SIGMA,
    PERTURBS,
    Aggregate,
    ClassWeighting,
    Combine,
    Perturb,
    REGradSettings,
)
from .strategy import NOISE_KEY, ExGrad, GradNorm, REGrad
from .weighting import CLASS_WEIGHTING_RULES, class_weights, layer_weights

__all__ = [
    "REGrad",
    "ExGrad",
    "GradNorm",
    "REGradSettings",
    "NOISE_KEY",
    "regrad_scores",
    "regression_regrad_scores",
    "regression_gradient_norms",
    "RegressionREGradSettings",
    "RegressionGradientNorms",
    "TARGETS",
    "VARIANCE_HEADS",
    "OUTPUT_WEIGHTINGS",
    "METRICS",
    "gradient_norms",
    "gradnorm_scores",
    "GradientNorms",
    "discover_layers",
    "Layer",
    "Engine",
    "iter_batches",
    "PairRule",
    "PAIR_RULES",
    "perturbation_noise",
    "parameter_noise",
    "parameter_scales",
    "trainable_parameters",
    "class_weights",
    "layer_weights",
    "CLASS_WEIGHTING_RULES",
    "ClassWeighting",
    "Aggregate",
    "Combine",
    "Perturb",
    "CLASS_WEIGHTINGS",
    "AGGREGATES",
    "COMBINES",
    "PERTURBS",
    "DEFAULT_CLASS_WEIGHTING",
    "DEFAULT_LAYER_ALPHA",
    "DEFAULT_N_PERTURBATIONS",
    "DEFAULT_SIGMA",
    "DEFAULT_AGGREGATE",
    "DEFAULT_COMBINE",
    "DEFAULT_PERTURB",
    "DEFAULT_BATCH_SIZE",
]
