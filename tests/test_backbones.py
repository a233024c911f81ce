"""torchvision backbones through ``al.models.resolve_model``: local weights, head replacement, grey inputs, frozen
backbones, one-line errors for wrong files, and the model-based strategies on such a model. Every weights file is
written by the test itself (nothing is downloaded); images are 32x32 so resnet18 stays fast on 2 cores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from al.errors import ConfigError
from al.learner import TorchLearner, last_linear
from al.models import Backbone, BackboneFactory, RepeatChannels, build_model, resolve_model
from al.strategy import Context
from strategies import build_strategy
from strategies.regrad import regrad_scores


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory) -> str:
    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return str(path)


def test_registered_names_pass_through_and_torchvision_names_give_a_factory():
    assert resolve_model("cnn") == "cnn"
    f = resolve_model("torchvision:resnet18")
    assert isinstance(f, BackboneFactory) and f.name == "torchvision:resnet18" and not f.freeze_backbone
    # build_model accepts the name too, so --model torchvision:resnet18 works without weights
    net = build_model("torchvision:resnet18", 4, (3, 32, 32))
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 4)


def test_unknown_builder_suggests_close_names():
    with pytest.raises(ConfigError, match=r"unknown torchvision model 'resnet81'.*'torchvision:resnet18'"):
        resolve_model("torchvision:resnet81")


def test_weights_are_loaded_and_the_head_replaced(resnet18_file):
    torch.manual_seed(0)
    net = resolve_model("torchvision:resnet18", weights=resnet18_file)(n_classes=3, input_shape=(3, 32, 32))
    assert isinstance(net, Backbone)
    head = last_linear(net)
    assert head is net.net.fc and (head.in_features, head.out_features) == (512, 3)
    saved = torch.load(resnet18_file, weights_only=True)
    own = net.net.state_dict()
    assert set(own) == set(saved)
    for k, v in saved.items():
        if not k.startswith("fc."):
            assert torch.equal(own[k], v), k
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_wrapped_weights_files_are_accepted(tmp_path, resnet18_file):
    state = torch.load(resnet18_file, weights_only=True)
    for key in ("state_dict", "model"):
        p = tmp_path / f"{key}.pt"
        torch.save({key: state, "epoch": torch.tensor(3)}, p)
        net = resolve_model("torchvision:resnet18", weights=p)(n_classes=3, input_shape=(3, 32, 32))
        assert torch.equal(net.net.conv1.weight, state["conv1.weight"])


def test_grey_inputs_are_repeated_to_three_channels(resnet18_file):
    net = resolve_model("torchvision:resnet18", weights=resnet18_file)(n_classes=3, input_shape=(1, 32, 32))
    assert isinstance(net.expand, RepeatChannels)
    x = torch.randn(2, 1, 32, 32)
    net.eval()
    with torch.no_grad():
        np.testing.assert_allclose(net(x).numpy(), net.net(x.repeat(1, 3, 1, 1)).numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="takes 3-channel images, but the inputs have 2"):
        resolve_model("torchvision:resnet18")(n_classes=3, input_shape=(2, 32, 32))


def test_frozen_backbone_changes_only_the_head_and_keeps_batchnorm_statistics(resnet18_file):
    net = resolve_model("torchvision:resnet18", weights=resnet18_file, freeze_backbone=True)(
        n_classes=3, input_shape=(3, 32, 32)
    )
    head = last_linear(net)
    assert [p.requires_grad for p in net.parameters()].count(True) == 2  # the head's weight and bias
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.5)
    net.train()
    assert not any(m.training for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(net(torch.randn(4, 3, 32, 32, generator=g)), torch.tensor([0, 1, 2, 0])).backward()
        opt.step()
    after = net.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == {"net.fc.weight", "net.fc.bias"}
    assert head is net.net.fc


def test_frozen_backbone_through_the_learner_trains_only_the_head(resnet18_file):
    factory = resolve_model("torchvision:resnet18", weights=resnet18_file, freeze_backbone=True)
    learner = TorchLearner(model=factory, n_classes=3, input_shape=(3, 32, 32), epochs=1, min_steps=2, seed=0)
    g = torch.Generator().manual_seed(1)
    learner.fit(torch.randn(8, 3, 32, 32, generator=g), np.arange(8) % 3)
    saved = torch.load(resnet18_file, weights_only=True)
    own = learner.network.state_dict()
    for k, v in saved.items():
        if not k.startswith("fc."):
            assert torch.equal(own[f"net.{k}"], v), k


def test_wrong_weights_files_name_the_first_mismatched_tensor(tmp_path):
    p34 = tmp_path / "resnet34.pt"
    torch.save(torchvision.models.resnet34().state_dict(), p34)
    with pytest.raises(ConfigError, match=r"resnet34.pt.*does not fit.*the file has tensor 'layer1\.2\.conv1\.weight'"):
        resolve_model("torchvision:resnet18", weights=p34)(n_classes=3, input_shape=(3, 32, 32))
    p7 = tmp_path / "resnet18-7.pt"
    torch.save(torchvision.models.resnet18(num_classes=7).state_dict(), p7)
    with pytest.raises(ConfigError) as e:
        resolve_model("torchvision:resnet18", weights=p7)(n_classes=3, input_shape=(3, 32, 32))
    msg = str(e.value)
    assert "'fc.weight' has shape (7, 512) in the file, (1000, 512) in the model (and 1 more)" in msg
    assert "\n" not in msg


def test_missing_and_foreign_weights_files_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_model("torchvision:resnet18", weights=tmp_path / "nope.pt")(n_classes=3, input_shape=(3, 32, 32))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file at all")
    with pytest.raises(ConfigError, match="cannot be read as a torch state dict") as e:
        resolve_model("torchvision:resnet18", weights=junk)(n_classes=3, input_shape=(3, 32, 32))
    assert "\n" not in str(e.value)
    lst = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], lst)
    with pytest.raises(ConfigError, match="not a state dict"):
        resolve_model("torchvision:resnet18", weights=lst)(n_classes=3, input_shape=(3, 32, 32))


def test_registered_models_take_weights_and_freezing_too(tmp_path):
    torch.manual_seed(0)
    ref = build_model("mlp", 10, (1, 8, 8))
    p = tmp_path / "mlp.pt"
    torch.save(ref.state_dict(), p)
    net = resolve_model("mlp", weights=p, freeze_backbone=True)(n_classes=10, input_shape=(1, 8, 8))
    assert torch.equal(net.net[1].weight, ref[1].weight)
    assert [p.requires_grad for p in net.parameters()].count(True) == 2
    with pytest.raises(ConfigError, match="unknown model"):
        resolve_model("mlpp", freeze_backbone=True)


@pytest.fixture(scope="module")
def resnet_learner(resnet18_file):
    factory = resolve_model("torchvision:resnet18", weights=resnet18_file)
    learner = TorchLearner(model=factory, n_classes=3, input_shape=(3, 32, 32), epochs=1, min_steps=2, seed=0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 3, 32, 32, generator=g)
    learner.fit(x[:12], np.arange(12) % 3)
    return learner, x


def test_regrad_scores_a_torchvision_backbone(resnet_learner):
    learner, x = resnet_learner
    u = regrad_scores(learner.network, x[12:], n_perturbations=1, batch_size=9)
    assert u.shape == (18,) and np.isfinite(u).all()


@pytest.mark.parametrize("name", ["badge", "coreset", "regrad"])
def test_strategies_run_on_a_torchvision_backbone(name, resnet_learner):
    learner, x = resnet_learner
    ctx = Context(
        np.arange(12, 30),
        np.arange(12),
        learner=learner,
        inputs_of=lambda ids: x[torch.from_numpy(ids)],
        n_classes=3,
    )
    kwargs = {"n_perturbations": 1} if name == "regrad" else {}
    sel = build_strategy(name, **kwargs)(ctx, 5, np.random.default_rng(0))
    ids = np.asarray(sel.ids)
    assert ids.shape == (5,) and len(np.unique(ids)) == 5 and np.isin(ids, np.arange(12, 30)).all()
