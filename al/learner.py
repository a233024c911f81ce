"""TorchLearner: trains a torch classifier on the labelled set, and provides what strategies need.

Constructor stores settings; ``reset()`` builds a fresh model (skorch's ``initialize()``). ``fit`` calls
``reset`` first unless ``warm_start`` is set, so "retrain from scratch" versus "fine-tune" is one flag.
It implements scikit-learn's estimator API (``fit``, ``predict``, ``predict_proba``, ``classes_``) so that
modAL's ``ActiveLearner`` can drive it.

Devices: ``device`` ("cpu" by default, "auto", "cuda", "cuda:N", "mps"; :func:`al.devices.resolve_device`) is where
the model trains and scores. Initial weights are always drawn on the CPU and then moved, so they are the same on
every device. Inference takes any :data:`al.inputs.Inputs` (a tensor, an array, a :class:`~al.inputs.LazyInputs`
read on demand, an iterable of batches), moves one batch at a time to the device and returns CPU results.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from torch import nn
from torch.nn import functional as F

from .devices import resolve_device, to_device
from .errors import ConfigError, IncompatibleStrategyError, ModelError
from .inputs import Inputs, LazyInputs, iter_batches, n_rows
from .models import build_model, set_mc_pass
from .seeding import torch_rng_scope

ArrayLike = np.ndarray | torch.Tensor


def as_tensor(x: ArrayLike) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    return t.float()  # a no-op for float32 tensors


def dropout_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]


@contextlib.contextmanager
def eval_mode(model: nn.Module, *, dropout: bool = False) -> Iterator[nn.Module]:
    """Evaluation mode for the duration, optionally with dropout layers (and only those) stochastic.

    Restores every module's previous ``training`` flag on exit, so scoring never changes the model.
    """
    saved = [(m, m.training) for m in model.modules()]
    model.eval()
    if dropout:
        for m in dropout_modules(model):
            m.train()
    try:
        yield model
    finally:
        for m, flag in saved:
            m.training = flag


def deterministic_trunk(model: nn.Module) -> int:
    """How many leading children of a plain ``nn.Sequential`` can run once for all MC-dropout passes.

    A child qualifies while it and everything inside it are torch.nn's own modules other than dropout and RReLU:
    in eval mode those are deterministic and draw nothing from the RNG, so their output is the same in every
    pass and the dropout masks drawn after them are unchanged. A user's own module, or any model that is not a
    plain Sequential, gets 0 (every pass runs the whole model).
    """
    if type(model) is not nn.Sequential:
        return 0
    k = 0
    for child in model:
        if any(
            isinstance(m, (nn.modules.dropout._DropoutNd, nn.RReLU)) or not type(m).__module__.startswith("torch.nn.")
            for m in child.modules()
        ):
            break
        k += 1
    return k if k < len(model) else 0


def last_linear(model: nn.Module, what: str = "this strategy") -> nn.Linear:
    """The model's last ``nn.Linear`` in module order: the classifier head whose input is the penultimate feature.

    Attention's ``out_proj`` (a ``NonDynamicallyQuantizableLinear``) is skipped: ``nn.MultiheadAttention`` applies
    its weight functionally, so hooks on it never fire and it is never the head.
    """
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear) and not isinstance(m, nn.modules.linear.NonDynamicallyQuantizableLinear):
            last = m
    if last is None:
        raise IncompatibleStrategyError(f"{what} needs a model whose last layer is nn.Linear")
    return last


#: Training has diverged when the last epoch's mean loss exceeds this many times that of a uniform guess (ln C).
#: A model that fits anything has a training loss well below ln C on its own labels; one 100 times above it is
#: confidently wrong on them, as after an exploding learning rate (``lr=1e6`` on digits ends near 1e6..1e12 nats
#: with every output saturated, while the loss itself stays finite).
DIVERGED_LOSS_FACTOR = 100.0


def _not_finite(values: torch.Tensor | np.ndarray) -> tuple[int, int]:
    """(rows holding NaN or inf, rows) of ``values: (n, ...)``."""
    if isinstance(values, np.ndarray):
        ok = np.isfinite(values.reshape(len(values), -1)).all(1)
        return int((~ok).sum()), len(ok)
    ok_t = torch.isfinite(values.reshape(len(values), -1)).all(1)
    return int((~ok_t).sum()), len(ok_t)


def batches(x: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for i in range(0, len(x), batch_size):
        yield x[i : i + batch_size]


def in_memory(X: object) -> bool:
    """True for inputs held as one array: a tensor, an ndarray, or a list/tuple of samples (not of batches).

    These take the path inference has always taken (one ``as_tensor`` then slices), so stored runs reproduce bit
    for bit; anything else (a LazyInputs, a DataLoader, a list of batch tensors) is read batch by batch.
    """
    if isinstance(X, (torch.Tensor, np.ndarray)):
        return True
    if isinstance(X, (list, tuple)):
        return not any(isinstance(b, (torch.Tensor, tuple, list)) for b in X)
    return False


def fit_inputs(X: ArrayLike | LazyInputs) -> torch.Tensor:
    """A labelled set's inputs as one tensor (the set is small: a LazyInputs set is materialised)."""
    return X.materialise().float() if isinstance(X, LazyInputs) else as_tensor(X)


class TorchLearner(BaseEstimator, ClassifierMixin):
    """A classifier trained with Adam on the labelled set.

    The schedule trains for ``epochs`` passes over the labelled set, but at least ``min_steps`` optimiser
    steps: with 20 labels, 30 epochs would be 30 steps, far too few to fit even that little data.

    mc_trunk_bytes: the largest output (bytes) of the deterministic layers before the first dropout that
    ``mc_predict_proba`` keeps in memory to share between its passes; beyond it every pass runs the whole model
    (same result, more time). Randomness: ``reset``, ``fit`` and ``mc_predict_proba`` seed torch's global RNG
    only inside :func:`al.seeding.torch_rng_scope`, so the caller's torch RNG state is the same afterwards.

    device: where the model trains and scores ("cpu", "auto", "cuda", "cuda:N", "mps"), resolved by
    :func:`al.devices.resolve_device` whenever a model is built (``device_`` holds the result). The initial weights
    are drawn on the CPU with the seeded CPU generator and then moved, so they are identical on every device; the
    batch order comes from a CPU generator too. Dropout masks on a GPU draw from that GPU's generator, seeded in the
    same scope: a run is reproducible on the same kind of GPU, and close to (not equal to) the CPU run.

    early_stopping: instead of the fixed schedule, train until a validation split stops improving, as the BatchBALD
    paper trains (Kirsch et al. 2019). The split is carved from the labelled set given to ``fit`` (``val_size``: a
    fraction below 1, else a count; at least one sample on each side), drawn by ``fit``'s seed (so per round in the
    loop; never from the pool or the test set). An epoch is at least EPOCH_SAMPLES training draws (the labelled part
    reshuffled as often as needed, as the paper's fixed-length sampler does, so that patience means the same with
    20 labels as with 300); after each the split's accuracy is measured (ties: the lower NLL), the best weights are
    kept, and training ends after ``patience`` epochs without improvement or at ``max_epochs``, with the best
    weights restored. ``epochs_run_``, ``best_epoch_`` and ``val_history_`` ((accuracy, NLL) per epoch) say what
    happened.
    """

    #: Training draws per epoch under early stopping (the BatchBALD paper's RandomFixedLengthSampler length).
    EPOCH_SAMPLES = 5056

    def __init__(
        self,
        model: str | Callable[..., nn.Module] = "cnn",
        n_classes: int = 10,
        input_shape: tuple[int, ...] = (1, 28, 28),
        epochs: int = 30,
        min_steps: int = 300,
        batch_size: int = 64,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warm_start: bool = False,
        seed: int = 0,
        eval_batch_size: int = 1024,
        progress: bool = False,
        mc_trunk_bytes: int = 1 << 30,
        device: str | torch.device = "cpu",
        early_stopping: bool = False,
        val_size: float = 0.2,
        patience: int = 3,
        max_epochs: int = 100,
        eval_mc_samples: int = 0,
    ) -> None:
        self.model = model
        self.n_classes = n_classes
        self.input_shape = input_shape
        self.epochs = epochs
        self.min_steps = min_steps
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.warm_start = warm_start
        self.seed = seed
        self.eval_batch_size = eval_batch_size
        self.progress = progress
        self.mc_trunk_bytes = mc_trunk_bytes
        self.device = device
        self.early_stopping = early_stopping
        self.val_size = val_size
        self.patience = patience
        self.eval_mc_samples = eval_mc_samples
        self.max_epochs = max_epochs

    # --- construction -------------------------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> TorchLearner:
        """Build a fresh, seeded model (the weights depend on ``seed`` only; the caller's torch RNG is untouched)."""
        device = resolve_device(self.device)
        with torch_rng_scope(self.seed if seed is None else seed, device):
            self._build(device)
        return self

    def _build(self, device: torch.device) -> None:
        # Draws the initial weights from torch's global CPU RNG (call inside torch_rng_scope), then moves them:
        # the same weights on every device. Moving draws nothing, so the RNG stream dropout continues is unchanged.
        if callable(self.model) and not isinstance(self.model, str):
            net = self.model(n_classes=self.n_classes, input_shape=tuple(self.input_shape))
        else:
            net = build_model(self.model, self.n_classes, self.input_shape)
        if device.type != "cpu":
            net = net.to(device)
        self.module_ = net
        self.device_ = device
        self.classes_ = np.arange(self.n_classes)

    @property
    def network_device(self) -> torch.device:
        """The device the built model lives on (that of its first parameter; the CPU without parameters)."""
        for p in self.network.parameters():
            return p.device
        return getattr(self, "device_", torch.device("cpu"))

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "module_")

    @property
    def network(self) -> nn.Module:
        """The trained (or freshly reset) ``nn.Module``; a ConfigError before ``fit()`` or ``reset()``."""
        if not self.is_fitted:
            raise ConfigError("the learner has no model yet: call fit() (or reset()) first")
        return self.module_

    # --- training -----------------------------------------------------------------------------------------------
    def fit(
        self,
        X: ArrayLike | LazyInputs,
        y: ArrayLike,
        seed: int | None = None,
        val: tuple[ArrayLike | LazyInputs, ArrayLike] | None = None,
    ) -> TorchLearner:
        """Train on ``X: (n, ...)``, ``y: (n,)``. ``seed`` fixes initialisation, batch order and dropout masks.
        ``val``: early stopping's validation set ``(X_val, y_val)`` given instead of carving one from ``X``
        (the loop's ``val_held_out``); every labelled sample then trains.

        The caller's torch RNG state is restored afterwards. With ``warm_start`` the training-time dropout masks
        are seeded by ``seed`` too (before, they continued whatever the global RNG held). The labelled set is
        small: a LazyInputs ``X`` is materialised, and the whole set is moved to the device once.
        """
        x = fit_inputs(X)
        if len(x) != len(y):
            raise ConfigError(f"fit got {len(x)} inputs but {len(y)} labels")
        if len(x) == 0:
            raise ConfigError("fit got an empty labelled set; label at least one sample first")
        yt = self._training_targets(y)
        seed = self.seed if seed is None else seed
        self.fit_seed_ = seed
        val_t = None
        if val is not None:
            xv = fit_inputs(val[0])
            yv = torch.as_tensor(np.asarray(val[1]), dtype=torch.long)
            if len(xv) != len(yv) or len(xv) == 0:
                raise ConfigError(f"fit's validation set has {len(xv)} inputs and {len(yv)} labels; give both, alike")
            val_t = (xv, yv)
        device = resolve_device(self.device)
        # One scope for initialisation and training: dropout while training continues the stream the weights
        # were drawn from, exactly as when reset() seeded the global RNG for good, so the weights are unchanged.
        with torch_rng_scope(seed, device):
            if not (self.warm_start and self.is_fitted):
                self._build(device)
            elif self.network_device != device:  # a warm start after the device setting changed
                self.module_ = self.module_.to(device)
                self.device_ = device
            dev_val = None if val_t is None else (to_device(val_t[0], device), to_device(val_t[1], device))
            self._train(to_device(x, device), to_device(yt, device), seed, dev_val)
        return self

    def _training_targets(self, y: ArrayLike) -> torch.Tensor:
        """What the loss compares the outputs with: class indices, checked to lie in range (a regressor's own:
        standardised numbers)."""
        yt = torch.as_tensor(np.asarray(y), dtype=torch.long)
        if yt.min() < 0 or yt.max() >= self.n_classes:
            raise ConfigError(f"labels must lie in [0, {self.n_classes - 1}], got {int(yt.min())}..{int(yt.max())}")
        return yt

    def _loss(self, out: torch.Tensor, yt: torch.Tensor) -> torch.Tensor:
        """The training loss of a batch: cross-entropy of the logits (a regressor: MSE)."""
        return F.cross_entropy(out, yt)

    def _chance_loss(self) -> tuple[float, str]:
        """The training loss of a model that knows nothing, and what that model is, for the divergence check."""
        return math.log(max(self.n_classes, 2)), "a uniform guess"

    def _validation_score(self, out: torch.Tensor, yt: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Early stopping's judgement of the model's outputs on the validation split: (score, larger is better;
        the history entry). Accuracy, ties broken by the lower NLL; the history holds (accuracy, NLL)."""
        logits = out.double()
        acc = float((logits.argmax(1) == yt).double().mean())
        nll = float(F.cross_entropy(logits, yt))
        return (acc, -nll), (acc, nll)

    def _mc_output(self, out: torch.Tensor) -> torch.Tensor:
        """One MC-dropout pass's outputs as the passes return them: class probabilities (float64)."""
        return torch.softmax(out.double(), 1)

    def _lr_hint(self) -> str:
        return f"lower the learning rate (--lr, now {self.lr:g}), or check the inputs and the model"

    def check_finite(self, values: torch.Tensor | np.ndarray, what: str) -> None:
        """ModelError when a row of ``values: (n, ...)`` (the model's outputs on ``what``) holds NaN or inf."""
        bad, n = _not_finite(values)
        if bad:
            raise ModelError(
                f"the model's outputs on {bad} of {n} {what} are not finite (NaN or inf), so training diverged or "
                f"those inputs hold NaN/inf; {self._lr_hint()}"
            )

    def _train(
        self, x: torch.Tensor, yt: torch.Tensor, seed: int, val: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> None:
        """Adam over the labelled set; ModelError when the loss becomes non-finite or ends up exploded.

        The loss is summed on the device and read once per epoch: one sync per epoch, not per step.
        ``x``, ``yt`` are on the model's device already; the shuffling generator stays on the CPU (the same batch
        order on every device).
        """
        net = self.network
        g = torch.Generator().manual_seed(seed + 1)
        opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        steps_per_epoch = math.ceil(len(x) / min(self.batch_size, len(x)))
        epochs = max(self.epochs, math.ceil(self.min_steps / steps_per_epoch))
        net.train()
        try:
            if self.early_stopping:
                mean_loss = self._train_early_stopping(net, opt, x, yt, g, seed, val)
            else:
                mean_loss = self._epochs(net, opt, x, yt, g, epochs)
        finally:  # the model is left in eval mode without gradients, even when training diverged
            net.eval()
            for p in net.parameters():
                p.grad = None
        chance, guess = self._chance_loss()
        limit = DIVERGED_LOSS_FACTOR * chance
        if mean_loss > limit:
            raise ModelError(
                f"training diverged: the last epoch's mean training loss is {mean_loss:.3g}, more than "
                f"{DIVERGED_LOSS_FACTOR:g} times that of {guess} ({limit:.3g}); {self._lr_hint()}"
            )

    def validation_split(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions ``(train, val)`` of an ``n``-sample labelled set under early stopping, drawn by ``seed``."""
        if n < 2:
            raise ConfigError(f"early stopping needs at least 2 labelled samples to hold one out, got {n}")
        k = int(round(self.val_size * n)) if self.val_size < 1 else int(self.val_size)
        k = min(max(k, 1), n - 1)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 2))
        return perm[k:].sort().values, perm[:k].sort().values

    def _train_early_stopping(
        self,
        net: nn.Module,
        opt: torch.optim.Optimizer,
        x: torch.Tensor,
        yt: torch.Tensor,
        g: torch.Generator,
        seed: int,
        val: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> float:
        """Epochs of at least EPOCH_SAMPLES draws until the validation split (or the given ``val`` set) stops
        improving; the best weights are restored. Returns the last epoch's mean training loss."""
        if val is not None:
            x_tr, y_tr, (x_va, y_va) = x, yt, val
        else:
            tr, va = self.validation_split(len(x), seed)
            tr, va = tr.to(x.device), va.to(x.device)
            x_tr, y_tr, x_va, y_va = x[tr], yt[tr], x[va], yt[va]
        repeats = max(1, math.ceil(self.EPOCH_SAMPLES / len(x_tr)))
        best: tuple[float, ...] | None = None  # (accuracy, -nll) for a classifier: larger is better
        best_state: dict[str, torch.Tensor] | None = None
        since_best, mean_loss = 0, math.nan
        self.epochs_run_, self.best_epoch_ = 0, 0
        self.val_history_: list[tuple[float, ...]] = []  # (accuracy, nll) after each epoch (a regressor: its own)
        for epoch in range(1, self.max_epochs + 1):
            mean_loss = self._epochs(net, opt, x_tr, y_tr, g, 1, repeats=repeats)
            self.epochs_run_ = epoch
            with eval_mode(net), torch.no_grad():
                out = net(x_va)
            score, seen = self._validation_score(out, y_va)
            self.val_history_.append(seen)
            if best is None or score > best:
                best, since_best, self.best_epoch_ = score, 0, epoch
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                since_best += 1
                if since_best >= self.patience:
                    break
        if best_state is not None:
            net.load_state_dict(best_state)
        return mean_loss

    def _epochs(
        self,
        net: nn.Module,
        opt: torch.optim.Optimizer,
        x: torch.Tensor,
        yt: torch.Tensor,
        g: torch.Generator,
        epochs: int,
        *,
        repeats: int = 1,
    ) -> float:
        """Train for ``epochs``; the last epoch's mean loss. ModelError as soon as an epoch's loss is not finite.
        ``repeats``: passes over the data per epoch, each in a fresh permutation (early stopping's long epochs)."""
        n = len(x)
        bs = min(self.batch_size, n)
        mean_loss = math.nan
        # Manual batching over in-memory tensors: DataLoader's per-item collate costs more than the step itself
        # for these small models. The permutation comes from the seeded generator, as a DataLoader's would.
        for epoch in self._progress(range(epochs), "train", epochs > 1):
            if repeats == 1:
                perm = torch.randperm(n, generator=g)
            else:
                perm = torch.cat([torch.randperm(n, generator=g) for _ in range(repeats)])
            if x.device.type != "cpu":
                perm = perm.to(x.device)  # one copy per epoch, not one per step
            total: torch.Tensor | None = None  # summed where the loss lives: read once per epoch, not per step
            n_steps = 0
            for i in range(0, len(perm), bs):
                idx = perm[i : i + bs]
                if len(idx) < 2 and n >= 2:
                    continue  # BatchNorm cannot train on a batch of one
                opt.zero_grad(set_to_none=True)
                loss = self._loss(net(x[idx]), yt[idx])
                loss.backward()
                opt.step()
                step_loss = loss.detach().double()
                total = step_loss if total is None else total + step_loss
                n_steps += 1
            if total is None:
                continue
            mean_loss = float(total) / n_steps
            if not math.isfinite(mean_loss):
                raise ModelError(
                    f"training diverged: the training loss became {mean_loss} in epoch {epoch + 1} of {epochs}; "
                    f"{self._lr_hint()}"
                )
        return mean_loss

    # --- inference ----------------------------------------------------------------------------------------------
    def _input_batches(self, X: Inputs) -> tuple[Iterator[torch.Tensor], int | None]:
        """CPU float batches of at most ``eval_batch_size`` rows, and the row count when known without reading.

        In-memory inputs (:func:`in_memory`) are converted once and sliced, exactly as before devices existed;
        anything else goes through :func:`al.inputs.iter_batches`, one batch in memory at a time.
        """
        if in_memory(X):
            x = as_tensor(X)  # type: ignore[arg-type]
            return batches(x, self.eval_batch_size), len(x)
        return (b.float() for b in iter_batches(X, self.eval_batch_size)), n_rows(X)

    @torch.no_grad()
    def logits(self, X: Inputs) -> torch.Tensor:
        """Logits ``(n, n_classes)`` float32 on the CPU, for any :data:`al.inputs.Inputs` ``X: (n, ...)``."""
        net = self.network
        dev = self.network_device
        parts, n = self._input_batches(X)
        with eval_mode(net):
            shown = self._progress(parts, "predict", n is not None and n >= 4 * self.eval_batch_size)
            out = [net(to_device(b, dev)).cpu() for b in shown]
        return torch.cat(out) if out else torch.empty(0, self.n_classes)

    def _progress(self, it, desc: str, worth_showing: bool = True):  # noqa: ANN001, ANN202
        """Wrap ``it`` in a tqdm bar when progress is on and the work is large enough to be worth showing."""
        if not (self.progress and worth_showing):
            return it
        from tqdm.auto import tqdm

        return tqdm(it, desc=desc, leave=False)

    def predict_proba(self, X: Inputs) -> np.ndarray:
        """Softmax probabilities, ``(n, n_classes)`` float64; ModelError when an output is not finite."""
        logits = self.logits(X)
        self.check_finite(logits, "inputs")
        return torch.softmax(logits.double(), dim=1).numpy()

    def predict(self, X: Inputs) -> np.ndarray:
        return self.predict_proba(X).argmax(1)

    @property
    def has_dropout(self) -> bool:
        return bool(dropout_modules(self.network))

    @torch.no_grad()
    def mc_predict_proba(self, X: Inputs, n_samples: int = 20, seed: int = 0) -> np.ndarray:
        """MC-dropout probabilities, ``(n_samples, n, n_classes)`` float64 on the CPU, for ``X: (n, ...)``.

        Only dropout layers are stochastic; BatchNorm and everything else stay in eval mode, so a model without
        dropout is refused rather than scored on BatchNorm noise.

        In-memory inputs (a tensor, an array) run pass-major: pass t scores every input before pass t + 1, the
        order stored runs were made in. Any other input (a :class:`~al.inputs.LazyInputs` read from files, an
        iterable of batches) is read ONCE, batch-major: each batch runs all ``n_samples`` passes before the next
        batch is read, so a pool is never held in memory, nor read T times. Both are deterministic for a seed (and
        a batch size); the batch-major masks are drawn in another order, so its values differ from the pass-major
        ones for the same seed, with the same distribution.
        """
        net = self.network
        if not dropout_modules(net):
            raise IncompatibleStrategyError(
                "MC-dropout needs a model with at least one dropout layer; this model has none. Use a model with "
                "nn.Dropout (the built-in cnn, mlp and resnet18 have one) or a strategy that needs no MC samples"
            )
        if not in_memory(X):
            return self._mc_batch_major(X, n_samples, seed)
        dev = self.network_device
        x = as_tensor(X)  # type: ignore[arg-type]
        out = np.empty((n_samples, len(x), self.n_classes))
        # Seeded at the start of the scope: the shared trunk below draws nothing, so the masks are those of
        # seeding just before the first pass. The caller's RNG stream is restored afterwards.
        with torch_rng_scope(seed, dev), eval_mode(net, dropout=True):
            # The deterministic layers before the first dropout run once; only the rest repeats per pass (for the
            # cnn that is ~8% of a forward pass). Same masks in the same order, so the same result as whole passes.
            # The inputs stay on the CPU and are copied per pass (cheap next to a pass); trunk outputs stay on the
            # device, within mc_trunk_bytes.
            k, head, inputs = deterministic_trunk(net), net, list(batches(x, self.eval_batch_size))
            if k and isinstance(net, nn.Sequential):  # k > 0 only for a plain Sequential
                trunk_net, trunk, size = net[:k], [], 0
                for b in inputs:  # stop as soon as the shared output would exceed the memory bound
                    trunk.append(trunk_net(to_device(b, dev)))
                    size += trunk[-1].numel() * trunk[-1].element_size()
                    if size > self.mc_trunk_bytes:
                        break
                else:
                    head, inputs = net[k:], trunk
            try:
                for t in self._progress(range(n_samples), "mc-dropout", len(x) >= self.eval_batch_size):
                    set_mc_pass(net, seed, t)
                    out[t] = torch.cat([self._mc_output(head(to_device(b, dev))) for b in inputs]).cpu().numpy()
            finally:
                set_mc_pass(net, None)
        self.check_finite(out.transpose(1, 0, 2), "inputs (MC-dropout passes)")
        return out

    def _mc_batch_major(self, X: Inputs, n_samples: int, seed: int) -> np.ndarray:
        """:meth:`mc_predict_proba` for inputs read on demand: one read, all passes per batch (batch-major)."""
        net = self.network
        dev = self.network_device
        parts, n = self._input_batches(X)
        cols: list[np.ndarray] = []  # (n_samples, b, C) per batch
        with torch_rng_scope(seed, dev), eval_mode(net, dropout=True):
            # The deterministic trunk runs once per batch (it draws nothing, so the masks are unchanged).
            k = deterministic_trunk(net)
            trunk_net, head = (net[:k], net[k:]) if k and isinstance(net, nn.Sequential) else (None, net)
            worth = n is not None and n >= self.eval_batch_size
            try:
                for b in self._progress(parts, "mc-dropout", worth):
                    h = to_device(b, dev)
                    if trunk_net is not None:
                        h = trunk_net(h)
                    passes = [self._pass(head, h, net, seed, t) for t in range(n_samples)]
                    cols.append(torch.stack(passes).cpu().numpy())
            finally:
                set_mc_pass(net, None)
        if not cols:
            return np.empty((n_samples, 0, self.n_classes))
        out = np.concatenate(cols, axis=1)
        self.check_finite(out.transpose(1, 0, 2), "inputs (MC-dropout passes)")
        return out

    def _pass(self, head: nn.Module, h: torch.Tensor, net: nn.Module, seed: int, t: int) -> torch.Tensor:
        """Outputs of MC pass ``t`` on one batch (consistent-dropout layers take pass ``t``'s mask)."""
        set_mc_pass(net, seed, t)
        return self._mc_output(head(h))

    def last_linear(self) -> nn.Linear:
        return last_linear(self.network, "embeddings")

    @torch.no_grad()
    def embed(self, X: Inputs) -> np.ndarray:
        """Penultimate features: the input of the last ``nn.Linear``, ``(n, d)`` float32 on the CPU."""
        net = self.network
        dev = self.network_device
        head = self.last_linear()
        feats: list[torch.Tensor] = []
        # each batch's features go to the CPU as they come: the device holds one batch's worth at a time
        h = head.register_forward_hook(lambda m, inp, out: feats.append(inp[0].detach().flatten(1).cpu()))
        try:
            parts, _ = self._input_batches(X)
            with eval_mode(net):
                for b in parts:
                    net(to_device(b, dev))
        finally:
            h.remove()
        if not feats:
            return np.empty((0, head.in_features), np.float32)
        out = torch.cat(feats)
        self.check_finite(out, "inputs (penultimate features)")
        return out.numpy()

    def evaluate(self, X: Inputs, y: ArrayLike) -> dict[str, float]:
        """Accuracy and mean negative log-likelihood on ``X: (n, ...)``, ``y: (n,)`` (X any :data:`al.inputs.Inputs`,
        a LazyInputs test set included); ModelError when an output is not finite. With ``eval_mc_samples`` the
        predictive distribution is the mean of that many MC-dropout passes (as the BatchBALD paper tests)."""
        yt = torch.as_tensor(np.asarray(y), dtype=torch.long)
        if self.eval_mc_samples:  # the mean of MC-dropout passes, seeded by the last fit's seed (so per round)
            seed = getattr(self, "fit_seed_", self.seed)
            probs = torch.as_tensor(self.mc_predict_proba(X, n_samples=self.eval_mc_samples, seed=seed)).mean(0)
            if len(yt) != len(probs):
                raise ConfigError(f"evaluate got {len(probs)} inputs but {len(yt)} labels")
            log_p = probs.clamp_min(torch.finfo(torch.float64).tiny).log()
            return {"accuracy": float((probs.argmax(1) == yt).double().mean()), "nll": float(F.nll_loss(log_p, yt))}
        logits = self.logits(X).double()
        self.check_finite(logits, "evaluation inputs")
        if len(yt) != len(logits):
            raise ConfigError(f"evaluate got {len(logits)} inputs but {len(yt)} labels")
        return {"accuracy": float((logits.argmax(1) == yt).double().mean()), "nll": float(F.cross_entropy(logits, yt))}
