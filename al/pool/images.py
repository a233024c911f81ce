"""Reading one image file into a model input: the one decoding path shared by folder pools, ``al.predict`` and
exported models.

``ImageSpec`` says what the model takes (channels, height, width, normalisation); ``ImageSpec.load(path)`` opens
any format Pillow reads, converts its mode (grey, palette, RGBA, 16-bit, CMYK ... to ``L`` or ``RGB``), resizes to
the declared size when it differs, and normalises, with torchvision ``transforms.v2``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import DataError

#: Image file suffixes a folder pool picks up (lower case); Pillow reads more, but these are what people store.
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jfif"}
)

#: Normalisation presets by name (``--normalise``): ImageNet statistics for pre-trained torchvision backbones.
NORMALISATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "half": ((0.5,), (0.5,)),
    "none": ((0.0,), (1.0,)),
}


@dataclass(frozen=True)
class ImageSpec:
    """What a model takes from an image file: ``channels`` (1 grey or 3 RGB), ``size`` (height, width) and the
    per-channel ``mean``/``std`` applied to pixels in [0, 1] (one value is used for every channel)."""

    channels: int
    size: tuple[int, int]
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    _transform: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise DataError(
                f"images must have 1 (grey) or 3 (RGB) channels, got {self.channels}; pass --channels 1 or 3"
            )
        h, w = self.size
        if h < 1 or w < 1:
            raise DataError(f"image size must be positive, got {self.size}; pass --image-size HxW")
        object.__setattr__(self, "size", (int(h), int(w)))
        object.__setattr__(self, "mean", _per_channel(self.mean, self.channels, "mean"))
        object.__setattr__(self, "std", _per_channel(self.std, self.channels, "std"))
        if any(s <= 0 for s in self.std):
            raise DataError(f"image std must be positive, got {self.std}")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, *self.size)

    @property
    def mode(self) -> str:
        return "L" if self.channels == 1 else "RGB"

    def transform(self) -> Any:
        """uint8 tensor ``(C, h, w)`` -> ``(C, H, W)`` of the declared size (torchvision transforms.v2, bilinear
        with antialiasing); applied only to images of another size."""
        if self._transform is None:
            from torchvision.transforms import v2

            object.__setattr__(self, "_transform", v2.Resize(self.size, antialias=True))
        return self._transform

    def read(self, path: str | os.PathLike) -> torch.Tensor:
        """The pixels of one image file in the declared mode and size, ``(C, H, W)`` uint8. Raises whatever
        Pillow raises on a corrupt or unreadable file (callers decide whether that skips the file or stops).

        Pillow decodes, NumPy hands the pixels to torch (v2's ``PILToTensor`` cost more than the decoding of a
        small PNG, measured on MNIST-sized files), and normalising is left to :meth:`normalise`, once per batch:
        uint8 batches also cross from loader workers at a quarter of the bytes."""
        from PIL import Image

        with Image.open(path) as im:
            im.load()
            pixels = np.array(to_mode(im, self.mode))  # a copy: torch wants a writable array
        t = torch.from_numpy(pixels)
        t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1).contiguous()
        if tuple(t.shape[1:]) != self.size:
            t = self.transform()(t)
        return t

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels ``(N, C, H, W)`` (or one image ``(C, H, W)``) -> float32 model inputs, ``(x / 255 - mean)
        / std`` per channel."""
        shape = (-1, 1, 1) if pixels.dim() == 3 else (1, -1, 1, 1)
        m = torch.tensor(self.mean, dtype=torch.float32).view(shape)
        s = torch.tensor(self.std, dtype=torch.float32).view(shape)
        return pixels.to(torch.float32).div_(255.0).sub_(m).div_(s)

    def load(self, path: str | os.PathLike) -> torch.Tensor:
        """The model input of one image file, ``(C, H, W)`` float32: :meth:`read` then :meth:`normalise` (the same
        arithmetic as a batch of a folder pool, so a file gives the same input either way)."""
        return self.normalise(self.read(path))

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "image",
            "channels": self.channels,
            "size": list(self.size),
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ImageSpec:
        return cls(int(d["channels"]), (int(d["size"][0]), int(d["size"][1])), tuple(d["mean"]), tuple(d["std"]))


def to_mode(im: Any, mode: str) -> Any:
    """``im`` converted to ``mode`` ("L" or "RGB"): 16-bit grey is scaled to 8 bits (PIL's own conversion clips),
    transparency is composited on white (a transparent background is not black ink)."""
    from PIL import Image

    if im.mode == mode:
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        import numpy as np

        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        im = Image.fromarray((a / top * 255.0).clip(0, 255).astype(np.uint8), "L")
        return im if mode == "L" else im.convert(mode)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, rgba)
    return im.convert(mode)


def _per_channel(values: tuple[float, ...] | list[float], channels: int, what: str) -> tuple[float, ...]:
    v = tuple(float(x) for x in values)
    if len(v) == 1:
        return v * channels
    if len(v) != channels:
        raise DataError(f"image {what} has {len(v)} values for {channels} channels; give 1 or {channels}")
    return v


def parse_size(text: str) -> tuple[int, int]:
    """``"224"`` -> (224, 224); ``"32x48"`` -> (32, 48) (height x width). DataError otherwise."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        nums = []
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2 or min(nums) < 1:
        raise DataError(f"--image-size {text!r} is not a size; write HxW (e.g. 28x28) or one number for a square")
    return nums[0], nums[1]
