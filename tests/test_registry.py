"""The entry-point registry: discovery from real package metadata, lazy import, broken and duplicate plugins."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from cmamil import registry
from cmamil.aggregators import create_aggregator
from cmamil.errors import PluginError, UnknownPluginError
from cmamil.models import create_model
from cmamil.plugin_check import check_aggregator, random_bag


def test_builtins_and_example_package_are_discovered():
    infos = registry.models.infos()
    assert infos["deit_small"].package == "cmamil"
    assert infos["swin_tiny"].package == "cmamil"
    assert infos["example_cnn"].package == "cmamil-example-plugin"
    assert registry.aggregators.info("example_max").package == "cmamil-example-plugin"


def test_discovery_imports_no_plugin_module():
    code = (
        "import sys; from cmamil import registry; registry.models.names(); registry.aggregators.names(); "
        "print(any(m.startswith(('cmamil.plugins.', 'cmamil_example_plugin', 'torch')) for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_third_party_model_and_aggregator_work_through_the_registry():
    model = create_model("example_cnn", num_classes=3)
    x = torch.randn(2, *model.data_config.input_size)
    assert model(x).shape == (2, 3)
    assert model.forward_features(x).shape == (2, model.num_features)
    encoder = create_model("example_cnn")
    assert encoder(x).shape == (2, encoder.num_features)
    aggregator = create_aggregator("example_max", in_dim=8, num_classes=2, magnifications=("5x", "10x"))
    out = aggregator(random_bag(8, ("5x", "10x")))
    assert out.logits.shape == (1, 2)
    assert set(out.attention) == {"5x", "10x"}


def test_timm_architecture_prefix():
    model = create_model("timm:resnet18", num_classes=0)
    assert model.num_features == 512
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 512)
    with pytest.raises(PluginError, match="timm has no architecture 'resnet_eighteen'"):
        create_model("timm:resnet_eighteen")


def test_unknown_name_lists_close_matches_and_installed_names():
    with pytest.raises(UnknownPluginError) as err:
        registry.models.load("deit_smal")
    message = str(err.value)
    assert "did you mean 'deit_small'" in message
    assert "swin_tiny" in message and "example_cnn" in message


def test_broken_plugin_is_reported_and_others_still_work(install_dist):
    install_dist(
        "broken-plugin",
        {"cmamil.models": {"broken_net": "broken_plugin_mod:factory"}},
        {"broken_plugin_mod.py": "raise ImportError('needs a library that is not installed')\n"},
    )
    status = registry.models.status("broken_net")
    assert status.startswith("broken: model 'broken_net' from package 'broken-plugin' 1.0 failed to load")
    assert "needs a library that is not installed" in status
    with pytest.raises(PluginError, match="broken-plugin"):
        create_model("broken_net")
    assert registry.models.status("example_cnn") == "ok"
    assert create_model("example_cnn", num_classes=2) is not None


def test_duplicate_name_warns_naming_both_packages(install_dist):
    install_dist(
        "other-plugin",
        {"cmamil.aggregators": {"example_max": "other_plugin_mod:factory"}},
        {"other_plugin_mod.py": "def factory(**kw):\n    raise RuntimeError('not this one')\n"},
    )
    with pytest.warns(UserWarning, match="'example_max' is registered by both") as record:
        info = registry.aggregators.info("example_max")
    message = str(record[0].message)
    assert "cmamil-example-plugin" in message and "other-plugin" in message
    assert info.package in {"cmamil-example-plugin", "other-plugin"}


def test_a_builtin_wins_a_name_clash(install_dist):
    install_dist("clash-plugin", {"cmamil.models": {"deit_small": "clash_mod:factory"}})
    with pytest.warns(UserWarning, match="using the one from 'cmamil'"):
        assert registry.models.info("deit_small").package == "cmamil"


def test_aggregator_contract_violation_is_a_plugin_error(install_dist):
    install_dist(
        "bad-aggregator",
        {"cmamil.aggregators": {"bad_agg": "bad_agg_mod:factory"}},
        {"bad_agg_mod.py": (
            "import torch\n"
            "class Bad(torch.nn.Module):\n"
            "    def forward(self, bag, label=None):\n"
            "        return {'logits': torch.zeros(1, 2)}\n"
            "def factory(**kw):\n"
            "    return Bad()\n"
        )},
    )
    with pytest.raises(PluginError, match="returned dict; its forward must return .*AggregatorOutput"):
        check_aggregator("bad_agg")
