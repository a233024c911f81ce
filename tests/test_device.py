"""Devices (``--device``) and inputs read on demand (LazyInputs) in the learner and the strategies.

The CPU tests run everywhere; the CUDA and MPS ones are skipped on machines without them (``bash
benchmarks/gpu_check.sh`` runs this file on a CUDA machine).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from al.devices import DEVICE_CHOICES, model_device, resolve_device, to_device
from al.errors import ConfigError
from al.inputs import LazyInputs
from al.learner import TorchLearner
from al.seeding import torch_rng_scope
from strategies.bayesian import mutual_information
from strategies.regrad import gradnorm_scores, iter_batches, regrad_scores

CUDA = torch.cuda.is_available()
MPS = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device (torch.cuda.is_available() is False)")
needs_mps = pytest.mark.skipif(not MPS, reason="needs an Apple MPS device (torch.backends.mps.is_available() is False)")


class TensorLazy(LazyInputs):
    """A LazyInputs over an in-memory tensor ``(N, ...)``: yields copies of ``batch``-row slices, as a file pool
    would (optionally pinned, as a DataLoader with ``pin_memory=True`` gives). Counts how often it is read."""

    def __init__(self, x: torch.Tensor, batch: int = 37, pin: bool = False) -> None:
        self.x, self.batch, self.pin, self.reads = x, batch, pin, 0
        self.input_shape = tuple(x.shape[1:])

    def __len__(self) -> int:
        return len(self.x)

    def __iter__(self) -> Iterator[torch.Tensor]:
        self.reads += 1
        for i in range(0, len(self.x), self.batch):
            b = self.x[i : i + self.batch].clone()
            yield b.pin_memory() if self.pin else b


def no_dropout_mlp(n_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """Deterministic training (no dropout masks): CPU and GPU runs differ by rounding only."""
    d = int(np.prod(input_shape))
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 64), nn.ReLU(), nn.Linear(64, n_classes))


def with_fallback_layer(n_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """GroupNorm has no closed-form REGrad rule: exercises the exact autograd fallback."""
    d = int(np.prod(input_shape))
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 32), nn.GroupNorm(4, 32), nn.ReLU(), nn.Linear(32, n_classes))


def learner(device: str = "cpu", model="mlp", **kw) -> TorchLearner:  # noqa: ANN001
    base = dict(epochs=2, min_steps=20, eval_batch_size=50)
    base.update(kw)
    return TorchLearner(model, 10, (1, 8, 8), device=device, **base)


@pytest.fixture(scope="module")
def fitted(digits) -> TorchLearner:
    return learner().fit(digits.train_x[:200], digits.train_y[:200], seed=1)


# --- resolve_device ---------------------------------------------------------------------------------------------
def test_resolve_device_words():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    expected = "cuda" if CUDA else "mps" if MPS else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected
    assert DEVICE_CHOICES == ("auto", "cpu", "cuda", "cuda:N", "mps")


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.mark.skipif(CUDA, reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "CUDA:1"])
def test_cuda_refused_without_cuda(spec):
    with pytest.raises(ConfigError) as e:
        resolve_device(spec)
    msg = _one_line(e)
    assert "CUDA is not available on this machine (torch.cuda.is_available() is False)" in msg
    assert msg.endswith("use --device cpu or --device auto") and msg.startswith(f"--device {spec.lower()}:")


@pytest.mark.skipif(MPS, reason="checks the message on a machine without MPS")
def test_mps_refused_without_mps():
    with pytest.raises(ConfigError, match=r"MPS is not available.*use --device cpu or --device auto") as e:
        resolve_device("mps")
    _one_line(e)


@pytest.mark.parametrize("spec", ["gpu", "cuda0", "tpu", "", "cpu:0x"])
def test_unknown_device_lists_the_choices(spec):
    with pytest.raises(ConfigError, match=r"is not a device; use one of auto, cpu, cuda, cuda:N, mps") as e:
        resolve_device(spec)
    _one_line(e)


@pytest.mark.parametrize("spec", ["cuda:x", "cuda:-1", "cuda:"])
def test_bad_cuda_index(spec):
    with pytest.raises(ConfigError, match=r"index must be a whole number >= 0, as in cuda:0") as e:
        resolve_device(spec)
    _one_line(e)


def test_not_a_string():
    with pytest.raises(ConfigError, match=r"--device must be a string, one of auto, cpu"):
        resolve_device(3)  # type: ignore[arg-type]


@needs_cuda
def test_cuda_index_beyond_the_device_count():
    n = torch.cuda.device_count()
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ConfigError, match=rf"this machine has {n} CUDA device.*cuda:0\.\.cuda:{n - 1}") as e:
        resolve_device(f"cuda:{n}")
    _one_line(e)


def test_device_setting_is_an_estimator_param():
    from sklearn.base import clone

    est = TorchLearner("mlp", 10, (1, 8, 8), device="cpu")
    assert clone(est).get_params()["device"] == "cpu"
    with pytest.raises(ConfigError, match="not a device"):
        TorchLearner("mlp", 10, (1, 8, 8), device="gpu").reset()


def test_to_device_and_model_device():
    x = torch.ones(2, 3)
    assert to_device(x, torch.device("cpu")) is x
    assert model_device(nn.Linear(2, 2)) == torch.device("cpu")
    assert model_device(nn.ReLU()) == torch.device("cpu")


# --- the CPU path is the one stored runs were made with ------------------------------------------------------------
def test_device_cpu_is_bit_identical_to_the_default(digits):
    x, y, xt = digits.train_x[:150], digits.train_y[:150], digits.test_x[:60]
    a = TorchLearner("mlp", 10, (1, 8, 8), epochs=2, min_steps=20).fit(x, y, seed=2)
    b = learner("cpu", eval_batch_size=1024).fit(x, y, seed=2)
    assert b.device_ == torch.device("cpu") and b.network_device == torch.device("cpu")
    for pa, pb in zip(a.module_.parameters(), b.module_.parameters(), strict=True):
        assert torch.equal(pa, pb)
    np.testing.assert_array_equal(a.predict_proba(xt), b.predict_proba(xt))
    np.testing.assert_array_equal(a.mc_predict_proba(xt, 4, seed=3), b.mc_predict_proba(xt, 4, seed=3))
    np.testing.assert_array_equal(a.embed(xt), b.embed(xt))


def test_torch_rng_scope_on_the_cpu_is_manual_seed():
    with torch_rng_scope(5, "cpu"):
        a = torch.rand(4)
    with torch_rng_scope(5):
        b = torch.rand(4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        c = torch.rand(4)
    assert torch.equal(a, b) and torch.equal(a, c)


# --- LazyInputs and other iterables give what the tensor gives -------------------------------------------------------
def test_lazy_inputs_match_the_tensor(fitted, digits):
    xt, yt = digits.test_x[:130], digits.test_y[:130]
    lazy = TensorLazy(xt)
    batches = [xt[:64], (xt[64:], yt[64:])]  # a DataLoader-like iterable of (x, y)
    np.testing.assert_array_equal(fitted.logits(lazy).numpy(), fitted.logits(xt).numpy())
    np.testing.assert_array_equal(fitted.predict_proba(lazy), fitted.predict_proba(xt))
    np.testing.assert_array_equal(fitted.predict_proba(batches), fitted.predict_proba(xt))
    np.testing.assert_array_equal(fitted.predict(lazy), fitted.predict(xt.numpy()))
    np.testing.assert_array_equal(fitted.embed(lazy), fitted.embed(xt))
    assert fitted.evaluate(lazy, yt.numpy()) == fitted.evaluate(xt, yt)
    with pytest.raises(ConfigError, match="130 inputs but 5 labels"):
        fitted.evaluate(lazy, yt[:5])
    empty = TensorLazy(xt[:0])
    assert fitted.logits(empty).shape == (0, 10) and fitted.embed(empty).shape == (0, 128)
    assert fitted.mc_predict_proba(empty, 3).shape == (3, 0, 10)


def test_mc_dropout_on_lazy_inputs_reads_once_and_is_deterministic(fitted, digits):
    xt = digits.test_x[:120]
    lazy = TensorLazy(xt, batch=40)
    a = fitted.mc_predict_proba(lazy, 6, seed=4)
    assert lazy.reads == 1 and a.shape == (6, 120, 10)
    np.testing.assert_array_equal(a, fitted.mc_predict_proba(TensorLazy(xt, batch=40), 6, seed=4))
    assert not np.allclose(a, fitted.mc_predict_proba(lazy, 6, seed=5))
    assert not np.allclose(a[0], a[1])  # the passes differ
    torch.manual_seed(99)
    state = torch.get_rng_state()
    fitted.mc_predict_proba(lazy, 2, seed=4)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched


def test_mc_dropout_batch_major_on_one_batch_is_the_tensor_path(fitted, digits):
    # With a single batch, batch-major and pass-major draw the masks in the same order: identical results.
    xt = digits.test_x[:45]
    np.testing.assert_array_equal(fitted.mc_predict_proba(TensorLazy(xt, 45), 5, 7), fitted.mc_predict_proba(xt, 5, 7))


def test_mc_dropout_batch_major_matches_in_distribution(fitted, digits):
    xt = digits.test_x[:150]
    t = 40
    lazy = fitted.mc_predict_proba(TensorLazy(xt, batch=30), t, seed=1)
    tensor = fitted.mc_predict_proba(xt, t, seed=1)
    assert not np.array_equal(lazy, tensor)  # other masks...
    # ...from the same distribution: the MC means agree to Monte Carlo error, and so does BALD on average
    assert np.abs(lazy.mean(0) - tensor.mean(0)).mean() < 0.02
    assert abs(mutual_information(lazy).mean() - mutual_information(tensor).mean()) < 0.02
    assert np.corrcoef(mutual_information(lazy), mutual_information(tensor))[0, 1] > 0.8


def test_fit_on_lazy_inputs_materialises_them(digits):
    x, y = digits.train_x[:100], digits.train_y[:100]
    a = learner().fit(TensorLazy(x), y, seed=0)
    b = learner().fit(x, y, seed=0)
    np.testing.assert_array_equal(a.predict_proba(digits.test_x[:20]), b.predict_proba(digits.test_x[:20]))


def test_regrad_and_gradnorm_on_lazy_inputs(fitted, digits):
    xt = digits.test_x[:90]
    net = fitted.network
    assert iter_batches is __import__("al.inputs", fromlist=["iter_batches"]).iter_batches
    np.testing.assert_array_equal(regrad_scores(net, TensorLazy(xt)), regrad_scores(net, xt))
    kw = dict(class_weighting="root", n_perturbations=2, batch_size=30)
    np.testing.assert_array_equal(regrad_scores(net, TensorLazy(xt, 20), **kw), regrad_scores(net, xt, **kw))
    np.testing.assert_array_equal(gradnorm_scores(net, TensorLazy(xt)), gradnorm_scores(net, xt))


# --- CUDA ----------------------------------------------------------------------------------------------------------
@pytest.fixture
def exact_cuda():
    """Full float32 on the GPU for comparisons with the CPU (TF32 convolutions/matmuls round to ~1e-3)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@needs_cuda
def test_cuda_initial_weights_equal_the_cpu_ones():
    a = TorchLearner("cnn", 10, (1, 28, 28)).reset(3)
    b = TorchLearner("cnn", 10, (1, 28, 28), device="cuda").reset(3)
    assert b.network_device.type == "cuda"
    for pa, pb in zip(a.module_.parameters(), b.module_.parameters(), strict=True):
        assert torch.equal(pa, pb.cpu())


@needs_cuda
def test_cuda_training_is_reproducible_and_leaves_the_callers_rng_alone(digits):
    x, y, xt = digits.train_x[:200], digits.train_y[:200], digits.test_x[:100]
    torch.cuda.init()
    torch.manual_seed(1)
    torch.cuda.manual_seed_all(1)
    cpu_state, cuda_state = torch.get_rng_state(), torch.cuda.get_rng_state()
    a = learner("cuda").fit(x, y, seed=5)
    assert torch.equal(torch.get_rng_state(), cpu_state) and torch.equal(torch.cuda.get_rng_state(), cuda_state)
    b = learner("cuda").fit(x, y, seed=5)
    pa = a.predict_proba(xt)
    assert isinstance(pa, np.ndarray) and pa.shape == (100, 10)
    np.testing.assert_array_equal(pa, b.predict_proba(xt))
    np.testing.assert_array_equal(a.mc_predict_proba(xt, 4, seed=2), b.mc_predict_proba(xt, 4, seed=2))
    assert torch.equal(torch.get_rng_state(), cpu_state) and torch.equal(torch.cuda.get_rng_state(), cuda_state)
    assert a.evaluate(xt, digits.test_y[:100])["accuracy"] > 0.5


@needs_cuda
def test_cuda_weights_back_on_the_cpu_are_close(digits, exact_cuda):
    x, y = digits.train_x[:200], digits.train_y[:200]
    a = learner("cpu", model=no_dropout_mlp).fit(x, y, seed=0)
    b = learner("cuda", model=no_dropout_mlp).fit(x, y, seed=0)
    for pa, pb in zip(a.module_.parameters(), b.module_.parameters(), strict=True):
        # Adam divides by sqrt(v): a gradient at rounding level can step either way, by up to lr (1e-3) a step
        torch.testing.assert_close(pb.detach().cpu(), pa.detach(), rtol=1e-2, atol=2e-3)
    np.testing.assert_allclose(b.predict_proba(digits.test_x), a.predict_proba(digits.test_x), atol=2e-3)


@needs_cuda
@pytest.mark.parametrize("model", ["mlp", with_fallback_layer])
@pytest.mark.parametrize(
    "kw",
    [
        {},
        dict(class_weighting="root", n_perturbations=2, batch_size=40),
        dict(class_weighting="root", n_perturbations=2, perturb="params", aggregate="mean-norm", top_k=3),
        dict(class_weighting="uniform", n_perturbations=2, aggregate="mean-grad"),
    ],
)
def test_regrad_on_cuda_matches_the_cpu(digits, exact_cuda, model, kw):
    est = learner("cpu", model=model).fit(digits.train_x[:150], digits.train_y[:150], seed=0)
    cpu_net = est.network
    gpu_net = copy.deepcopy(cpu_net).to("cuda")
    xt = digits.test_x[:100]
    ids = np.arange(100) * 2
    s_cpu = regrad_scores(cpu_net, xt, ids=ids, rng=np.random.default_rng(0), **kw)
    s_gpu = regrad_scores(gpu_net, TensorLazy(xt, 33, pin=True), ids=ids, rng=np.random.default_rng(0), **kw)
    # a caller's CUDA tensor: the noise is drawn on the CPU and moved to it
    s_dev = regrad_scores(gpu_net, xt.cuda(), ids=ids, rng=np.random.default_rng(0), **kw)
    np.testing.assert_allclose(s_dev, s_cpu, rtol=1e-4, atol=1e-9)
    assert s_gpu.dtype == np.float64 and s_gpu.shape == (100,)
    np.testing.assert_allclose(s_gpu, s_cpu, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(gradnorm_scores(gpu_net, xt), gradnorm_scores(cpu_net, xt), rtol=1e-4)
    for a, b in zip(cpu_net.parameters(), gpu_net.parameters(), strict=True):
        assert b.device.type == "cuda" and b.grad is None
        torch.testing.assert_close(b.detach().cpu(), a.detach(), rtol=0, atol=0)  # left as found


@needs_cuda
def test_bald_on_cuda(digits, exact_cuda):
    from strategies.diversity import BADGE

    x, y, xt = digits.train_x[:200], digits.train_y[:200], digits.test_x[:150]
    est = learner("cuda").fit(x, y, seed=0)
    mc = est.mc_predict_proba(xt, 10, seed=3)
    assert isinstance(mc, np.ndarray) and mc.shape == (10, 150, 10)
    np.testing.assert_array_equal(mc, est.mc_predict_proba(xt, 10, seed=3))
    lazy = est.mc_predict_proba(TensorLazy(xt, 50, pin=True), 10, seed=3)
    np.testing.assert_array_equal(lazy, est.mc_predict_proba(TensorLazy(xt, 50), 10, seed=3))
    mi = mutual_information(mc)
    assert np.isfinite(mi).all() and (mi >= 0).all() and mi.max() > 0
    # the CPU model with the same weights gives the same distribution (other masks)
    cpu = copy.deepcopy(est)
    cpu.module_ = cpu.module_.cpu()
    mc_cpu = cpu.mc_predict_proba(xt, 10, seed=3)
    assert np.abs(mc.mean(0) - mc_cpu.mean(0)).mean() < 0.05
    np.testing.assert_allclose(est.predict_proba(xt), cpu.predict_proba(xt), atol=1e-5)
    np.testing.assert_allclose(est.embed(TensorLazy(xt)), cpu.embed(xt), rtol=1e-4, atol=1e-5)
    BADGE().check_learner(est)  # its probe batch goes to the model's device


# --- MPS -----------------------------------------------------------------------------------------------------------
@needs_mps
def test_mps_training_is_reproducible_and_close_to_the_cpu(digits):
    x, y, xt = digits.train_x[:200], digits.train_y[:200], digits.test_x[:100]
    a = learner("mps").fit(x, y, seed=5)
    b = learner("mps").fit(x, y, seed=5)
    assert a.network_device.type == "mps"
    np.testing.assert_array_equal(a.predict_proba(xt), b.predict_proba(xt))
    c = learner("mps", model=no_dropout_mlp).fit(x, y, seed=0)
    d = learner("cpu", model=no_dropout_mlp).fit(x, y, seed=0)
    np.testing.assert_allclose(c.predict_proba(xt), d.predict_proba(xt), atol=1e-3)
    net = d.network
    np.testing.assert_allclose(regrad_scores(c.network, xt), regrad_scores(net, xt), rtol=1e-3)


# --- benchmarks/gpu_check.sh: the prepared device check refuses a machine without CUDA --------------------------------
@pytest.mark.skipif(CUDA, reason="checks the no-CUDA exit path")
def test_gpu_check_exits_2_without_cuda(capsys, monkeypatch):
    import importlib.util
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    p = subprocess.run(["bash", str(root / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and "no CUDA device" in p.stderr
    spec = importlib.util.spec_from_file_location("gpu_check", root / "benchmarks" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", mod)  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    assert mod.main([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--cpu-only-smoke" in err


@pytest.mark.skipif(CUDA, reason="checks the no-CUDA exit path")
def test_gpu_resnet_suite_exits_2_without_cuda(tmp_path):
    """Issue 17 part 3's prepared GPU run refuses a CPU machine at once, writing nothing."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = root / "benchmarks" / "gpu_resnet_suite.sh"
    results = [root / "benchmarks" / "results" / f"regrad_suite_resnet18.{ext}" for ext in ("md", "json")]

    def state() -> list[int | None]:  # committed results, once a GPU run adds them, must stay untouched
        return [f.stat().st_mtime_ns if f.exists() else None for f in results]

    before = state()
    p = subprocess.run(["bash", str(script), "5"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and "no CUDA device" in p.stderr
    # a time limit that is not whole seconds is refused before anything starts
    p = subprocess.run(["bash", str(script), "9m"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and "whole seconds" in p.stderr and "'9m'" in p.stderr
    assert state() == before


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_regrad_suite_runs_on_cuda_and_its_models_rescore_on_the_cpu(tmp_path):
    """benchmarks/regrad_suite.py --device cuda (what gpu_resnet_suite.sh runs), at toy size: it trains and scores
    on the GPU; the cached models (CPU tensors) then load on the CPU."""
    import json
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    data = os.environ.get("AL_DATA_DIR", str(root.parent / "shared" / "data"))
    if not (Path(data) / "MNIST" / "raw").is_dir():
        pytest.skip(f"MNIST raw files not found under {data}; set AL_DATA_DIR")
    env = {**os.environ, "AL_DATA_DIR": data, "AL_CACHE_DIR": str(tmp_path / "cache")}
    out = tmp_path / "suite.md"
    args = ["--models", "2", "--sizes", "100", "--rotations", "30", "--n-ood", "40", "--n-rot", "20", "--epochs", "1"]
    args += ["--min-steps", "5", "--large-epochs", "1", "--mc-samples", "2", "--alphas", "-10", "0", "--top-ks", "0"]
    args += ["--sigmas", "--mean-grad-sigmas", "--param-sigmas", "--out", str(out)]
    for device in ("cuda", "cpu"):
        p = subprocess.run(
            [sys.executable, str(root / "benchmarks" / "regrad_suite.py"), *args, "--device", device],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert p.returncode == 0, p.stderr[-3000:]
        res = json.loads(out.with_suffix(".json").read_text())
        assert res["args"]["device"] == device
        if device == "cuda":
            assert "on device cuda" in out.read_text() and sum(res["trained_seconds"].values()) > 0
        else:
            assert sum(res["trained_seconds"].values()) == 0  # every model came from the cache
