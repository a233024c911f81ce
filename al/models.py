"""Model factories. ``--model`` takes a registered name, ``torchvision:<builder>`` or ``package.module:factory``.

A factory is called as ``factory(n_classes=..., input_shape=(C, H, W))`` and returns an ``nn.Module`` that
maps ``(N, C, H, W)`` to logits ``(N, n_classes)``. A user's factory may accept fewer keywords: only those
it declares are passed.

``torchvision:<builder>`` is any name of ``torchvision.models.list_models()`` (``torchvision:resnet18``,
``torchvision:mobilenet_v3_small``, ...), built with random weights (nothing is ever downloaded) and, through
:func:`resolve_model`, loaded from a local state-dict file and optionally frozen but for its classifier head.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from .errors import ConfigError
from .registry import Registry

ModelFactory = Callable[..., nn.Module]
MODELS: Registry[ModelFactory] = Registry("model")


@MODELS.register("cnn")
def cnn(n_classes: int = 10, input_shape: tuple[int, ...] = (1, 28, 28), dropout: float = 0.25) -> nn.Module:
    """Small CNN for 28x28 grey images: two 3x3 conv blocks (32, 64), a 128-unit dense layer, dropout before
    each dense layer. 3x3 kernels keep a forward pass at about 2.6M multiply-adds per image (5x5 kernels cost 3x
    more for no accuracy gain at these label counts)."""
    c, h, w = input_shape
    side_h, side_w = ((h - 2) // 2 - 2) // 2, ((w - 2) // 2 - 2) // 2
    if side_h < 1 or side_w < 1:
        raise ConfigError(f"the 'cnn' model needs images of at least 10x10, got {input_shape}; use --model mlp")
    return nn.Sequential(
        nn.Conv2d(c, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(64 * side_h * side_w, 128),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(128, n_classes),
    )


class ConsistentDropout(nn.Dropout):
    """Dropout whose MC-dropout masks are the same for every input of one pass (BatchBALD's "consistent" MC
    dropout, Kirsch et al. 2019): while training it is ``nn.Dropout``; during MC-dropout scoring the learner
    sets :attr:`pass_seed` for each pass (:func:`set_mc_pass`), and every input of that pass, in whatever batch and
    batch order it comes, is multiplied by one mask drawn from that seed. Joint scores over a candidate set
    (BatchBALD) then compare the same T sampled models for every candidate, as the paper's estimator assumes.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__(p)
        #: The current MC pass's mask seed; None: ordinary dropout (training, or an MC pass of another model).
        self.pass_seed: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.pass_seed is None or self.p == 0:
            return super().forward(x)
        g = torch.Generator(device=x.device).manual_seed(self.pass_seed)
        keep = torch.rand(x.shape[1:], generator=g, device=x.device, dtype=x.dtype) >= self.p
        return x * keep / (1.0 - self.p)


class ConsistentDropout2d(ConsistentDropout):
    """Channel dropout (``nn.Dropout2d``: a whole feature map kept or dropped) with consistent MC-dropout masks: in an
    MC pass every input of the pass loses the same channels, drawn from the pass's seed (:func:`set_mc_pass`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.pass_seed is None or self.p == 0:
            return nn.functional.dropout2d(x, self.p, self.training)
        g = torch.Generator(device=x.device).manual_seed(self.pass_seed)
        shape = (x.shape[1],) + (1,) * (x.dim() - 2)
        keep = torch.rand(shape, generator=g, device=x.device, dtype=x.dtype) >= self.p
        return x * keep / (1.0 - self.p)


def set_mc_pass(model: nn.Module, seed: int | None, t: int = 0) -> None:
    """Give every :class:`ConsistentDropout` of ``model`` the mask seed of MC pass ``t`` under ``seed`` (one seed per
    module and pass); ``seed`` None turns them back into ordinary dropout."""
    for k, m in enumerate(x for x in model.modules() if isinstance(x, ConsistentDropout)):
        m.pass_seed = None if seed is None else (seed * 1_000_003 + t * 101 + k) % 2**62


def _batchbald_sides(name: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Channels and the feature map's height and width after the BatchBALD models' two 5x5 convolutions, each
    followed by 2x2 pooling; ConfigError for images smaller than 16x16."""
    c, h, w = input_shape
    side_h, side_w = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
    if side_h < 1 or side_w < 1:
        raise ConfigError(f"the {name!r} model needs images of at least 16x16, got {input_shape}")
    return c, side_h, side_w


@MODELS.register("batchbald-cnn")
def batchbald_cnn(n_classes: int = 10, input_shape: tuple[int, ...] = (1, 28, 28), dropout: float = 0.5) -> nn.Module:
    """The BatchBALD paper's MNIST model (Kirsch et al. 2019, appendix): two 5x5 convolutions (32, 64 channels),
    each followed by ReLU and 2x2 max pooling, a 128-unit dense layer, dropout 0.5 (consistent MC dropout: one mask
    per pass for every candidate, :class:`ConsistentDropout`), and the output layer."""
    c, side_h, side_w = _batchbald_sides("batchbald-cnn", input_shape)
    return nn.Sequential(
        nn.Conv2d(c, 32, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * side_h * side_w, 128),
        nn.ReLU(),
        ConsistentDropout(dropout),
        nn.Linear(128, n_classes),
    )


@MODELS.register("batchbald-cnn-paper")
def batchbald_cnn_paper(
    n_classes: int = 10, input_shape: tuple[int, ...] = (1, 28, 28), dropout: float = 0.5
) -> nn.Module:
    """The BatchBALD paper's MNIST model with dropout where the paper puts it (Kirsch et al. 2019, appendix: "two
    blocks of [convolution, dropout, max-pooling, relu], with 32 and 64 5x5 convolution filters", then a two-layer
    MLP of 128 and 10 units with dropout between the layers; the authors' ``src/mnist_model.py`` uses channel dropout
    in the blocks), every dropout 0.5 and consistent across the candidates of an MC pass. ``batchbald-cnn`` (dropout
    before the output layer only) is the first reading of the paper, kept so that stored runs resume unchanged."""
    c, side_h, side_w = _batchbald_sides("batchbald-cnn-paper", input_shape)
    return nn.Sequential(
        nn.Conv2d(c, 32, 5),
        ConsistentDropout2d(dropout),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Conv2d(32, 64, 5),
        ConsistentDropout2d(dropout),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * side_h * side_w, 128),
        ConsistentDropout(dropout),
        nn.ReLU(),
        nn.Linear(128, n_classes),
    )


@MODELS.register("lenet5")
def lenet5(n_classes: int = 10, input_shape: tuple[int, ...] = (1, 28, 28)) -> nn.Module:
    """LeNet-5 (LeCun et al. 1998) with ReLU and max pooling, padded for 28x28 inputs."""
    c, h, w = input_shape
    return nn.Sequential(
        nn.Conv2d(c, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * ((h // 2 - 4) // 2) * ((w // 2 - 4) // 2), 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, n_classes),
    )


@MODELS.register("mlp")
def mlp(
    n_classes: int = 10, input_shape: tuple[int, ...] = (1, 8, 8), hidden: int = 128, dropout: float = 0.25
) -> nn.Module:
    """Two hidden layers with dropout; the default for scikit-learn's 8x8 digits."""
    d = 1
    for s in input_shape:
        d *= s
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(d, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, n_classes),
    )


@MODELS.register("mlp-regressor")
def mlp_regressor(
    n_classes: int = 1, input_shape: tuple[int, ...] = (1,), hidden: int = 64, dropout: float = 0.1
) -> nn.Module:
    """The regression tasks' default (``--task regression``): two hidden ReLU layers of 64 units, each followed by
    dropout 0.1 (so that MC dropout has a predictive variance: the ``mc-variance`` strategy, the NLL's epistemic
    part), and one output, the predicted mean (``n_classes`` is the output width: 1). Dropout 0.1 as in Gal &
    Ghahramani's regression experiments (ICML 2016). The ``mlp`` architecture with these defaults."""
    return mlp(n_classes, input_shape, hidden, dropout)


@MODELS.register("resnet18")
def resnet18(n_classes: int = 10, input_shape: tuple[int, ...] = (3, 32, 32)) -> nn.Module:
    """torchvision's ResNet-18 adapted to 32x32 inputs (3x3 stem, no max-pool), with dropout before the head."""
    import torchvision

    m = torchvision.models.resnet18(num_classes=n_classes)
    m.conv1 = nn.Conv2d(input_shape[0], 64, 3, 1, 1, bias=False)
    m.maxpool = nn.Identity()
    m.fc = nn.Sequential(nn.Dropout(0.2), nn.Linear(512, n_classes))
    return m


class PatchTransformer(nn.Module):
    """A small vision transformer: non-overlapping patches, a class token, ``nn.TransformerEncoder``."""

    def __init__(
        self,
        n_classes: int = 10,
        input_shape: tuple[int, ...] = (1, 28, 28),
        patch: int = 7,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        c, h, w = input_shape
        if h % patch or w % patch:
            raise ConfigError(f"image {h}x{w} is not divisible into {patch}x{patch} patches")
        self.patch = patch
        self.embed = nn.Linear(c * patch * patch, dim)
        n_tokens = (h // patch) * (w // patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, n_tokens + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim * 2, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch
        n, c = x.shape[:2]
        t = x.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).reshape(n, -1, c * p * p)
        z = torch.cat([self.cls.expand(n, -1, -1), self.embed(t)], 1) + self.pos
        z = self.norm(self.encoder(z))
        return self.head(self.drop(z[:, 0]))


MODELS.register("patch-transformer", PatchTransformer)


def build_model(name: str, n_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """Build a registered model, a ``torchvision:<builder>`` (random weights) or a user factory given as
    ``package.module:function``."""
    if name.startswith(TORCHVISION_PREFIX):
        return resolve_model(name)(n_classes=n_classes, input_shape=tuple(input_shape))  # type: ignore[operator]
    if ":" in name:
        mod_name, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(
                f"cannot import model factory {name!r} ({e}); give it as package.module:function "
                f"importable from the current directory or an installed package"
            ) from e
    else:
        factory = MODELS.get(name)
    try:
        params = inspect.signature(factory).parameters
        accepts_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):
        params, accepts_all = MappingProxyType({}), True
    kwargs = {
        k: v for k, v in (("n_classes", n_classes), ("input_shape", tuple(input_shape))) if accepts_all or k in params
    }
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model factory {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


# --------------------------------------------------------------------------------------------------------------
# Pre-trained backbones: torchvision builders, local weights files, frozen backbones.
# --------------------------------------------------------------------------------------------------------------
TORCHVISION_PREFIX = "torchvision:"


def torchvision_builders() -> list[str]:
    """Every builder name ``torchvision:<builder>`` accepts (``torchvision.models.list_models()``)."""
    import torchvision

    return sorted(torchvision.models.list_models())


def resolve_model(
    name: str, *, weights: str | os.PathLike[str] | None = None, freeze_backbone: bool = False
) -> str | ModelFactory:
    """What ``TorchLearner(model=...)`` should take for ``--model name [--weights FILE] [--freeze-backbone]``.

    A registered name or ``package.module:factory`` without weights or freezing passes through unchanged (so a
    stored run's model name stays what it was). ``torchvision:<builder>``, or any name with ``weights`` or
    ``freeze_backbone``, gives a :class:`BackboneFactory`. Unknown torchvision builders are a ConfigError with
    close matches; the weights file itself is read when the factory is called (each round's fresh model).
    """
    if name.startswith(TORCHVISION_PREFIX):
        builder = name[len(TORCHVISION_PREFIX) :].strip()
        known = torchvision_builders()
        if builder not in known:
            close = difflib.get_close_matches(builder.lower(), known, n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(repr(TORCHVISION_PREFIX + c) for c in close)}?" if close else ""
            raise ConfigError(
                f"unknown torchvision model {builder!r}{hint} (torchvision.models.list_models() lists all "
                f"{len(known)}, e.g. resnet18, mobilenet_v3_small, efficientnet_b0)"
            )
        return BackboneFactory(TORCHVISION_PREFIX + builder, weights, freeze_backbone)
    if weights is None and not freeze_backbone:
        return name
    if ":" not in name:
        MODELS.get(name)  # an unknown name fails here, with suggestions, not at the first round
    return BackboneFactory(name, weights, freeze_backbone)


@dataclass(frozen=True)
class BackboneFactory:
    """``(n_classes, input_shape) -> nn.Module`` for a torchvision builder or any other model name, with an
    optional local weights file and frozen backbone (see :func:`resolve_model`).

    A torchvision model is built as torchvision defines it (``get_model(builder, weights=None)``, its ImageNet
    head included) so that a state dict saved from the same builder loads with every shape matching; only then
    is the head, the last ``nn.Linear`` in module order, replaced by a fresh ``nn.Linear(in_features,
    n_classes)``. Grey inputs on a backbone whose first convolution takes 3 channels go through
    :class:`RepeatChannels` first, so ImageNet weights apply unchanged (the grey value becomes R = G = B).
    """

    name: str
    weights: str | os.PathLike[str] | None = None
    freeze_backbone: bool = False

    @property
    def is_torchvision(self) -> bool:
        return self.name.startswith(TORCHVISION_PREFIX)

    def __call__(self, n_classes: int = 10, input_shape: tuple[int, ...] = (3, 224, 224)) -> nn.Module:
        input_shape = tuple(input_shape)
        if self.is_torchvision:
            import torchvision

            net = torchvision.models.get_model(self.name[len(TORCHVISION_PREFIX) :], weights=None)
        else:
            net = build_model(self.name, n_classes, input_shape)
        if self.weights is not None:
            load_weights(net, self.weights, self.name)
        head_name, head = _last_linear(net, self.name)
        if head.out_features != n_classes:
            net.set_submodule(head_name, nn.Linear(head.in_features, n_classes))
        expand: nn.Module = nn.Identity()
        if self.is_torchvision and len(input_shape) == 3:
            expand = _channel_adapter(net, input_shape[0], self.name)
        return Backbone(net, expand, frozen_head=head_name if self.freeze_backbone else None)


class RepeatChannels(nn.Module):
    """``(N, 1, H, W)`` -> ``(N, k, H, W)`` by repeating the grey channel: a grey image fed to a backbone
    trained on RGB, with no new weights to learn."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(-1, self.k, *x.shape[2:])

    def extra_repr(self) -> str:
        return f"k={self.k}"


class Backbone(nn.Module):
    """A wrapped backbone: ``expand`` (grey -> RGB or Identity), then ``net``, whose last ``nn.Linear`` is
    the classifier head (so ``al.learner.last_linear`` and every embedding strategy find it).

    ``frozen_head``: the head's qualified name inside ``net`` when the backbone is frozen. Every other parameter
    then has ``requires_grad=False``, and ``train()`` keeps the backbone's BatchNorm layers in eval mode: with a
    labelled set of a few dozen images, batch statistics of tiny batches would otherwise overwrite the
    pre-trained running statistics every round, and a frozen backbone would change after all. Dropout is left
    to train normally (MC-dropout strategies need it).
    """

    def __init__(self, net: nn.Module, expand: nn.Module | None = None, *, frozen_head: str | None = None) -> None:
        super().__init__()
        self.expand = expand if expand is not None else nn.Identity()
        self.net = net
        self.frozen_head = frozen_head
        if frozen_head is not None:
            head = net.get_submodule(frozen_head)
            keep = {id(p) for p in head.parameters()}
            for p in net.parameters():
                p.requires_grad_(id(p) in keep)
            self._frozen_norms = [
                m for m in net.modules() if isinstance(m, nn.modules.batchnorm._NormBase) and m not in head.modules()
            ]
        else:
            self._frozen_norms = []

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        for m in self._frozen_norms:
            m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.expand(x))


def _last_linear(net: nn.Module, name: str) -> tuple[str, nn.Linear]:
    """The qualified name and module of ``net``'s last ``nn.Linear`` (the rule of ``al.learner.last_linear``,
    which this module cannot import: the learner imports it)."""
    found: tuple[str, nn.Linear] | None = None
    for qual, m in net.named_modules():
        if isinstance(m, nn.Linear) and not isinstance(m, nn.modules.linear.NonDynamicallyQuantizableLinear):
            found = (qual, m)
    if found is None or not found[0]:
        raise ConfigError(
            f"model {name!r} has no nn.Linear classifier head (its last layer is not nn.Linear, as in squeezenet "
            f"or the segmentation models); pick a classification backbone such as torchvision:resnet18"
        )
    return found


def _channel_adapter(net: nn.Module, channels: int, name: str) -> nn.Module:
    first = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    takes = first.in_channels if first is not None else channels
    if channels == takes:
        return nn.Identity()
    if channels == 1:
        return RepeatChannels(takes)
    raise ConfigError(f"model {name!r} takes {takes}-channel images, but the inputs have {channels} channels")


def read_state_dict(path: str | os.PathLike[str], what: str = "weights file") -> dict[str, torch.Tensor]:
    """A state dict from a local file (``torch.load(weights_only=True)``: no pickled code runs); a
    ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is unwrapped. One-line ConfigError otherwise."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {str(p)!r} does not exist; give the path of a saved state dict (torch.save)")
    try:
        obj: Any = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises pickle, zip and runtime errors alike for a file that is not its own
        reason = " ".join(str(e).split())[:200]
        raise ConfigError(
            f"{what} {str(p)!r} cannot be read as a torch state dict ({type(e).__name__}: {reason})"
        ) from e
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not (
        isinstance(obj, Mapping)
        and obj
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        raise ConfigError(
            f"{what} {str(p)!r} holds a {type(obj).__name__}, not a state dict of named tensors; save one with "
            f"torch.save(model.state_dict(), path)"
        )
    return dict(obj)


def state_dict_mismatch(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str | None:
    """None when ``state`` loads into ``model`` strictly; else a description of the first mismatched tensor
    (in the model's order, then the file's) and how many there are."""
    own = model.state_dict()
    problems = []
    for k, v in own.items():
        if k not in state:
            problems.append(f"tensor {k!r} {tuple(v.shape)} is missing from the file")
        elif tuple(state[k].shape) != tuple(v.shape):
            problems.append(
                f"tensor {k!r} has shape {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the model"
            )
    for k, v in state.items():
        if k not in own:
            problems.append(f"the file has tensor {k!r} {tuple(v.shape)} that the model lacks")
    if not problems:
        return None
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return problems[0] + more


def load_weights(net: nn.Module, path: str | os.PathLike[str], name: str) -> None:
    """Load a local state-dict file into ``net`` strictly; a one-line ConfigError naming the first mismatch."""
    state = read_state_dict(path)
    problem = state_dict_mismatch(net, state)
    if problem is not None:
        raise ConfigError(
            f"weights file {str(path)!r} does not fit model {name!r}: {problem}; save the weights from the same "
            f"builder (torch.save(torchvision.models.get_model(builder).state_dict(), path))"
        )
    net.load_state_dict(state)
