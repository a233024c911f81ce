"""Model factories. ``--model`` takes a registered name or ``package.module:factory``.

A factory is called as ``factory(n_classes=..., input_shape=(C, H, W))`` and returns an ``nn.Module`` that
maps ``(N, C, H, W)`` to logits ``(N, n_classes)``. A user's factory may accept fewer keywords: only those
it declares are passed.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from types import MappingProxyType

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
    """Build a registered model or a user factory given as ``package.module:function``."""
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
