"""Training recipes: every shipped recipe loads, validates and trains one epoch; layering; the plateau schedule."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from click.testing import CliRunner

from cmamil import registry
from cmamil.cli import main
from cmamil.recipes import load_recipe, recipe_names
from cmamil.synthetic.patches import write_patch_set
from cmamil.training.config import BagTrainConfig, PatchTrainConfig
from cmamil.training.optim import LRSchedule

RECIPES = ("cma_mil", "fadeformer", "magfusion", "mscvit", "s4d_medmnist")
FAST = ["--epochs", "1", "--device", "cpu", "--num-workers", "0", "--no-progress"]


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _small(model: str) -> list[str]:
    """--model-option flags that shrink a registered model to its small test variant."""
    options = registry.models.load(model).small_options
    return [item for key, value in options.items() for item in ("--model-option", f"{key}={value}")]


@pytest.fixture(scope="module")
def patch_root(tmp_path_factory):
    return write_patch_set(tmp_path_factory.mktemp("patches") / "set", size=32,
                           sizes={"training": 3, "validation": 1, "testing": 1})


def test_every_recipe_is_shipped_and_names_its_study_and_kind():
    assert tuple(recipe_names()) == RECIPES
    for name in RECIPES:
        recipe = load_recipe(name)
        assert recipe.study and recipe.kind in ("bags", "patches") and recipe.options["model"]
    listed = _invoke("recipes", "list")
    assert listed.exit_code == 0
    assert "fadeformer: FadeFormer" in listed.stdout and "scheduler=plateau" in listed.stdout
    assert "cmamil train --recipe cma_mil --features DIR --labels CSV" in listed.stdout
    unknown = _invoke("train", "--recipe", "fadeformr", "--images", "x", "--out", "y")
    assert unknown.exit_code == 1
    assert unknown.stderr.startswith("Error: no recipe named 'fadeformr'; did you mean fadeformer?")


@pytest.mark.parametrize("name", RECIPES)
def test_each_recipe_validates_and_trains_one_epoch(name, patch_root, planted_files, tmp_path):
    recipe = load_recipe(name)
    out = tmp_path / name
    if recipe.kind == "bags":
        folder, labels = planted_files
        inputs = ["--features", folder, "--labels", labels, "--folds", 2, "--val-fraction", 0.5, "--min-epochs", 0,
                  "--model-option", "dim=8", "--no-figures"]
    else:
        inputs = ["--images", patch_root, *_small(recipe.options["model"]), "--embeddings", 0]
        inputs += ["--explain", 1 if name == "mscvit" else 0] + ([] if name == "fadeformer" else ["--no-figures"])
    result = _invoke("train", "--recipe", name, *inputs, *FAST, "--out", out)
    assert result.exit_code == 0, result.output + repr(result.exception)
    saved = yaml.safe_load((out / "config.yaml").read_text())["config"]
    flags = {str(item)[2:].replace("-", "_") for item in inputs + FAST if str(item).startswith("--")}
    flagged = {str(item).partition("=")[0] for item in inputs if "=" in str(item)}
    for key, value in recipe.options.items():  # the recipe's values reached the run, where no flag overrode them
        if key == "model_options":
            kept = {k: v for k, v in value.items() if k not in flagged}
            assert {k: saved["model_options"][k] for k in kept} == kept
        elif key not in flags and key != "figures":
            assert saved[key] == value, key
    assert json.loads((out / "fold_0" / "metrics.json").read_text())["best_epoch"] == 1
    if name == "fadeformer":  # the study's figures: training curves, confusion matrix, PR and ROC; results JSON
        figures = {p.name for p in (out / "figures").iterdir()}
        assert {"fold_0_training.png", "confusion_matrix.png", "pr.png", "roc.png"} <= figures
        assert (out / "summary.json").is_file()
    if name == "mscvit":  # Grad-CAM overlays of the test set
        assert any((out / "fold_0" / "explain").rglob("*.png"))


def test_config_file_overrides_the_recipe_and_flags_override_both(patch_root, tmp_path):
    options = tmp_path / "mine.yaml"
    options.write_text("lr: 0.002\nbatch_size: 4\nmodel_options:\n  drop_rate: 0.3\n")
    out = tmp_path / "run"
    result = _invoke("train", "--recipe", "fadeformer", "--config", options, "--batch-size", 2, "--images",
                     patch_root, "--out", out, "--dry-run")
    assert result.exit_code == 0, result.output
    from cmamil.cli.layers import layered_options  # the same layering, read back as values
    import click

    from cmamil.cli.train import train

    ctx = click.Context(train)
    ctx.params = {"batch_size": 2}
    ctx.set_parameter_source("batch_size", click.core.ParameterSource.COMMANDLINE)
    known = set(BagTrainConfig.__dataclass_fields__) | set(PatchTrainConfig.__dataclass_fields__)
    given, kind = layered_options(ctx, {"batch_size": 2}, options, "fadeformer", known)
    assert kind == "patches"
    assert (given["lr"], given["batch_size"], given["weight_decay"]) == (0.002, 2, 1e-4)
    assert given["model_options"] == {"drop_rate": 0.3, "attn_drop_rate": 0.1}
    wrong = _invoke("train", "--recipe", "cma_mil", "--images", patch_root, "--out", out)
    assert wrong.stderr.strip() == "Error: recipe cma_mil trains on bags; give --features and --labels"


def test_a_recipe_file_is_itself_a_valid_config_file(patch_root, tmp_path):
    copy = tmp_path / "magfusion.yaml"
    copy.write_text(_invoke("recipes", "show", "magfusion").stdout)
    result = _invoke("train", "--config", copy, "--images", patch_root, "--out", tmp_path / "r", "--dry-run")
    assert result.exit_code == 0, result.output


def _plateau(monitor: str, patience: int, warmup: int = 0) -> tuple[LRSchedule, torch.optim.Optimizer]:
    config = PatchTrainConfig(model="s4d", out="x", images=("x",), scheduler="plateau", plateau_factor=0.5,
                              plateau_patience=patience, warmup_epochs=warmup, monitor=monitor, lr=0.1)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    optimizer.param_groups[0]["base_lr"] = 0.1
    return LRSchedule(config, steps_per_epoch=3, optimizer=optimizer), optimizer


def test_plateau_halves_the_lr_once_the_monitor_stays_flat_beyond_patience():
    schedule, optimizer = _plateau("f1_macro", patience=2)
    # f1 improves at epochs 1-2, then stays at 0.7: epochs 3 and 4 are tolerated (patience 2), epoch 5 is the
    # third flat epoch, so the lr halves after it; three more flat epochs (6, 7, 8) halve it again.
    lrs = []
    for epoch, f1 in enumerate([0.5, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.9], start=1):
        schedule.set(optimizer, (epoch - 1) * 3)
        lrs.append(optimizer.param_groups[0]["lr"])
        schedule.end_epoch(epoch, f1)
    assert lrs == pytest.approx([0.1] * 5 + [0.05] * 3 + [0.025])
    state = schedule.state_dict()
    resumed, optimizer2 = _plateau("f1_macro", patience=2)
    resumed.load_state_dict(state)
    assert resumed.plateau.num_bad_epochs == schedule.plateau.num_bad_epochs == 0


def test_plateau_on_loss_minimises_and_waits_for_the_warm_up():
    schedule, optimizer = _plateau("loss", patience=0, warmup=1)
    schedule.set(optimizer, 0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 / 3)  # warm-up: step 1 of 3
    schedule.end_epoch(1, 1.0)  # a warm-up epoch is not counted
    schedule.set(optimizer, 3)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
    schedule.end_epoch(2, 0.8)  # better (lower): kept
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
    schedule.end_epoch(3, 0.9)  # worse, patience 0: halved at once
    schedule.set(optimizer, 9)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


def test_the_recipes_guide_names_every_recipe_and_only_existing_options():
    import re
    import shlex
    from pathlib import Path

    import click

    guide = (Path(__file__).resolve().parents[1] / "docs" / "recipes.md").read_text()
    assert all(f"## {name}" in guide for name in RECIPES)
    blocks = "\n".join(re.findall(r"```bash\n(.*?)\n```", guide, flags=re.S)).replace("\\\n", " ")
    table = re.findall(r"`(cmamil (?:train|crossmag) --recipe [^`]*)`", guide)
    commands = [shlex.split(line.split("#")[0]) for line in blocks.splitlines() + table if line.startswith("cmamil ")]
    assert {args[1] for args in commands} == {"recipes", "train", "crossmag", "models"}
    for args in commands:
        command = main.get_command(click.Context(main), args[1])
        if isinstance(command, click.Group):
            command = command.get_command(click.Context(command), args[2])
        known = {opt for param in command.params for opt in param.opts + param.secondary_opts}
        used = {a.split("=")[0] for a in args[2:] if a.startswith("--")}
        assert used <= known, (args[:3], used - known)
        recipe = args[args.index("--recipe") + 1] if "--recipe" in args else None
        assert recipe in (None, "NAME", *RECIPES)
