"""Plugins written with timm or plain-MIL habits: dict data_config, bare-logit aggregators, labelled build errors."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from cmamil.aggregators import AggregatorOutput, aggregator_loss, create_aggregator, forward_bag
from cmamil.training.checkpoint import load_checkpoint
from cmamil.cli import main
from cmamil.errors import InputError, PluginError
from cmamil.store import read_bag
from cmamil.models import IMAGENET_MEAN, DataConfig, create_model
from cmamil.plugin_check import check_aggregator, check_model, random_bag
from cmamil.synthetic import PlantedSignal, write_planted_cohort

MAGS = ("5x", "10x")


def _plugin(install_dist, name: str, group: str, source: str) -> None:
    """Install a one-module plugin package `<name>-plugin` whose `factory` is registered as `name`."""
    module = f"{name}_mod"
    install_dist(f"{name.replace('_', '-')}-plugin", {group: {name: f"{module}:factory"}}, {f"{module}.py": source})


def _model_with_data_config(config: str) -> str:
    return (
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    num_features = 4\n"
        f"    data_config = {config}\n"
        "    def forward_features(self, x):\n"
        "        return x.mean((2, 3)).repeat(1, 2)[:, :4]\n"
        "    forward = forward_features\n"
        "def factory(**kw):\n"
        "    return Net()\n"
    )


def test_dict_data_config_becomes_a_data_config_once():
    model = create_model("example_timm_cnn", num_classes=2, img_size=24)
    assert model.data_config == DataConfig(input_size=(3, 24, 24), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                                           interpolation="bilinear")
    assert check_model("example_timm_cnn").data_config.input_size == (3, 32, 32)
    timm_model = create_model("timm:resnet18")
    assert isinstance(timm_model.data_config, DataConfig) and timm_model.data_config.mean == IMAGENET_MEAN


def test_unusable_data_config_names_the_plugin_its_package_and_the_key(install_dist):
    _plugin(install_dist, "no_std", "cmamil.models",
            _model_with_data_config("{'input_size': (3, 8, 8), 'mean': (0.5, 0.5, 0.5)}"))
    with pytest.raises(PluginError) as err:
        create_model("no_std")
    assert str(err.value) == (
        "model 'no_std' from package 'no-std-plugin': data_config has no 'std'; "
        "a timm-style data_config needs input_size (C, H, W), mean and std"
    )


def test_data_config_of_the_wrong_shape_or_type_is_a_plugin_error(install_dist):
    _plugin(install_dist, "flat_size", "cmamil.models",
            _model_with_data_config("{'input_size': (8, 8), 'mean': (0.5,) * 3, 'std': (0.5,) * 3}"))
    with pytest.raises(PluginError, match=r"model 'flat_size' from package 'flat-size-plugin': data_config .* "
                                          r"is not usable: input_size must be \(C, H, W\)"):
        create_model("flat_size")
    _plugin(install_dist, "text_config", "cmamil.models", _model_with_data_config("'imagenet'"))
    with pytest.raises(PluginError, match="model 'text_config' from package 'text-config-plugin': data_config is "
                                          "a str; make it a cmamil.models.DataConfig or a timm-style mapping"):
        create_model("text_config")


def test_factory_errors_name_the_plugin_and_its_package(install_dist):
    with pytest.raises(PluginError, match=r"^model 'example_cnn' from package 'cmamil-example-plugin' rejected "
                                          r"its options \['depth'\]"):
        create_model("example_cnn", depth=3)
    _plugin(install_dist, "needs_gpu", "cmamil.models", "def factory(**kw):\n    raise RuntimeError('no GPU')\n")
    with pytest.raises(PluginError, match="^model 'needs_gpu' from package 'needs-gpu-plugin' failed to build: "
                                          "RuntimeError: no GPU$"):
        create_model("needs_gpu")
    with pytest.raises(InputError, match="weights file 'missing.pth' not found for model 'mscvit_t'"):
        create_model("mscvit_t", weights="missing.pth")  # the plugin's own one-line error passes unchanged


def test_aggregator_build_errors_name_the_plugin_and_its_package(install_dist):
    with pytest.raises(PluginError, match=r"^aggregator 'example_bare_mean' from package 'cmamil-example-plugin' "
                                          r"rejected its options \['dim'\]"):
        create_aggregator("example_bare_mean", in_dim=8, num_classes=2, magnifications=MAGS, dim=4)
    _plugin(install_dist, "picky", "cmamil.aggregators",
            "def factory(**kw):\n    raise ValueError('needs at least two magnifications')\n")
    with pytest.raises(PluginError, match="^aggregator 'picky' from package 'picky-plugin': needs at least two"):
        create_aggregator("picky", in_dim=8, num_classes=2, magnifications=("5x",))


def test_forward_bag_turns_bare_logits_into_an_output_that_trains():
    torch.manual_seed(0)
    aggregator = create_aggregator("example_bare_mean", in_dim=8, num_classes=3, magnifications=MAGS)
    bag, label = random_bag(8, MAGS), torch.tensor([2])
    output = forward_bag(aggregator, bag, label)
    assert isinstance(output, AggregatorOutput) and output.attention == {} and output.aux_loss is None
    pooled = torch.cat([bag.features[m].mean(0) for m in MAGS])
    torch.testing.assert_close(output.logits, aggregator.classifier(pooled)[None])
    loss = aggregator_loss(aggregator, output, label)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(output.logits, label))
    loss.backward()
    assert aggregator.classifier.weight.grad.abs().sum() > 0
    assert forward_bag(aggregator, bag).logits.shape == (1, 3)
    assert check_aggregator("example_bare_mean", num_classes=2) is not None


class _Recorder(torch.nn.Module):
    """Records the label it is given and returns a ready AggregatorOutput."""

    def __init__(self) -> None:
        super().__init__()
        self.labels: list = []
        self.output = AggregatorOutput(logits=torch.zeros(1, 2))

    def forward(self, bag, label=None):
        self.labels.append(label)
        return self.output


def test_forward_bag_passes_the_label_only_to_aggregators_that_take_it():
    recorder, label = _Recorder(), torch.tensor([1])
    assert forward_bag(recorder, random_bag(4, MAGS), label) is recorder.output
    forward_bag(recorder, random_bag(4, MAGS))
    assert recorder.labels == [label, None]
    cma = create_aggregator("cma_mil", in_dim=8, num_classes=2, magnifications=MAGS, dim=8)
    assert forward_bag(cma, random_bag(8, MAGS), label).aux_loss is not None  # the label reached its instance loss


def test_forward_bag_refuses_other_outputs_in_one_line(install_dist):
    class Rows(torch.nn.Module):
        def forward(self, bag):
            return torch.zeros(3, 2)

    class Pair(torch.nn.Module):
        def forward(self, bag):
            return torch.zeros(1, 2), {}

    with pytest.raises(PluginError, match=r"^aggregator Rows returned Tensor of shape \(3, 2\); its forward "
                                          r"must return \(1, num_classes\) logits or a "
                                          r"cmamil.aggregators.AggregatorOutput$"):
        forward_bag(Rows(), random_bag(4, MAGS))
    with pytest.raises(PluginError, match="^aggregator Pair returned tuple; its forward must return"):
        forward_bag(Pair(), random_bag(4, MAGS))
    _plugin(install_dist, "wide", "cmamil.aggregators", (
        "import torch\n"
        "class Wide(torch.nn.Module):\n"
        "    def forward(self, bag):\n"
        "        return torch.zeros(1, 5)\n"
        "def factory(**kw):\n"
        "    return Wide()\n"
    ))
    with pytest.raises(PluginError, match=r"aggregator 'wide' from package 'wide-plugin': logits \(1, 5\), "
                                          r"expected \(1, 2\)"):
        check_aggregator("wide")


def test_plugins_list_check_accepts_the_timm_style_plugins():
    result = CliRunner().invoke(main, ["plugins", "list", "--check"])
    rows = {line.split()[0]: line.split() for line in result.output.splitlines()[1:]}
    assert rows["example_timm_cnn"][1:] == ["model", "cmamil-example-plugin", "0.1.0", "ok"]
    assert rows["example_bare_mean"][1:] == ["aggregator", "cmamil-example-plugin", "0.1.0", "ok"]


def test_cli_trains_a_bare_logit_aggregator_on_feature_files(tmp_path):
    folder = tmp_path / "feats"
    labels = write_planted_cohort(folder, 8, slides_per_patient=2, dim=8, n_coarse=2,
                                  signal=PlantedSignal("20x", tiles=2, shift=5.0))
    run = tmp_path / "runs" / "bare"
    args = ["train", "--features", str(folder), "--labels", str(labels), "--model", "example_bare_mean",
            "--folds", "2", "--epochs", "2", "--val-fraction", "0.5", "--min-epochs", "0", "--out", str(run),
            "--num-workers", "0", "--device", "cpu"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert result.stdout.splitlines()[3].startswith("mean±std")
    for fold in (0, 1):
        predictions = pd.read_csv(run / f"fold_{fold}" / "predictions.csv")
        checkpoint = load_checkpoint(run / f"fold_{fold}" / "checkpoint.pt")
        meta = checkpoint
        model = create_aggregator(meta["model"], in_dim=meta["in_dim"], num_classes=2,
                                  magnifications=tuple(meta["magnifications"]))
        model.load_state_dict(checkpoint["state_dict"])
        row = predictions.iloc[0]
        with torch.no_grad():
            logits = forward_bag(model.eval(), read_bag(folder / f"{row.id}.h5")).logits
        assert torch.softmax(logits, dim=1)[0, 1].item() == pytest.approx(row.prob_positive, abs=1e-5)
