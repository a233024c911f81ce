"""User-style model factories referenced as tests.factories:<name>."""

from torch import nn


def three_class_mlp(input_shape=(1, 8, 8)):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))


def linear(n_classes, input_shape):
    d = 1
    for s in input_shape:
        d *= s
    return nn.Sequential(nn.Flatten(), nn.Dropout(0.1), nn.Linear(d, n_classes))


def failing_after(labels, n_ok: int, message: str = "stop here"):
    """A ground-truth oracle over ``labels`` that answers ``n_ok`` calls, then raises RuntimeError(message)."""
    calls = {"n": 0}

    class Oracle:
        name = "ground-truth"

        def label(self, ids):
            calls["n"] += 1
            if calls["n"] > n_ok:
                raise RuntimeError(message)
            return {int(i): int(labels[i]) for i in ids}

    return Oracle()
