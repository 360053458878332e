"""Built-in MIL aggregators: contract, parameter counts, the SVM loss, dense/chunked/local cross-attention."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from cmamil import registry
from cmamil.aggregators import Bag, aggregator_loss, create_aggregator
from cmamil.errors import PluginError
from cmamil.losses import SmoothTop1SVM
from cmamil.plugin_check import check_aggregator
from cmamil.plugins.cma_mil import ancestors, dense_attention, local_attention
from cmamil.synthetic import nested_bag

MAGS = ("5x", "10x", "20x")
BUILTINS = ("abmil", "clam_sb", "cma_mil", "mean_pool")


def _bag(n_coarse: int = 3, dim: int = 16, mags: tuple[str, ...] = MAGS, seed: int = 0) -> Bag:
    return nested_bag(n_coarse, dim, mags, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_is_registered_by_cmamil_and_meets_the_contract(name):
    assert registry.aggregators.info(name).package == "cmamil"
    model = check_aggregator(name)
    bag = _bag()
    out = model(bag, label=torch.tensor([1]))
    assert out.logits.shape == (1, 2)
    for mag, attention in out.attention.items():
        assert attention.shape == (bag.features[mag].shape[0],)
    aggregator_loss(model, out, torch.tensor([1])).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_cma_mil_parameter_count_matches_the_reference():
    torch.manual_seed(0)
    model = create_aggregator("cma_mil", in_dim=512, num_classes=2, magnifications=MAGS)
    assert sum(p.numel() for p in model.parameters()) == 363_982
    # every parameter but the reference's unused `classifiers` layer (258) receives a gradient
    bag = _bag(n_coarse=2, dim=512)
    for label in (0, 1):
        out = model(bag, torch.tensor([label]))
        model.loss(out, torch.tensor([label])).backward()
    used = sum(p.numel() for p in model.parameters() if p.grad is not None and p.grad.abs().sum() > 0)
    assert used == 363_724
    assert model.classifiers.weight.grad is None
    lean = create_aggregator("cma_mil", in_dim=512, num_classes=2, magnifications=MAGS, reference_layout=False)
    assert sum(p.numel() for p in lean.parameters()) == 363_724


def test_clam_sb_parameter_count():
    model = create_aggregator("clam_sb", in_dim=1024, num_classes=2, magnifications=("20x",))
    assert sum(p.numel() for p in model.parameters()) == 790_791


def test_smooth_top1_svm_matches_hand_computed_values_in_both_regimes():
    svm = SmoothTop1SVM(3)
    smooth_scores = torch.tensor([[1.0, 2.0, 0.5]])
    # smooth: log(exp(1+0-1) + exp(2+1-1) + exp(0.5+1-1)) = log(1 + e^2 + e^0.5)
    expected_smooth = math.log(1 + math.exp(2) + math.exp(0.5))
    assert svm(smooth_scores, torch.tensor([0])).item() == pytest.approx(expected_smooth, rel=1e-6)
    # hard: top1 - top2 = 9 >= ln(1000): max(10 + 1, 0 + 0, 1 + 1) - 0 = 11
    hard_scores = torch.tensor([[10.0, 0.0, 1.0]])
    assert svm(hard_scores, torch.tensor([1])).item() == pytest.approx(11.0)
    batch = svm(torch.cat([smooth_scores, hard_scores]), torch.tensor([0, 1]))
    assert batch.item() == pytest.approx((expected_smooth + 11.0) / 2, rel=1e-6)
    # just below the threshold the smooth form is used: log(1 + e^(1-6.9)) for x = [6.9, 0], y = 0
    near = SmoothTop1SVM(2)(torch.tensor([[6.9, 0.0]]), torch.tensor([0]))
    assert near.item() == pytest.approx(math.log(1 + math.exp(1 - 6.9)), rel=1e-5)
    # without a margin the smooth form is cross-entropy
    x, y = torch.randn(5, 4), torch.tensor([0, 3, 1, 2, 2])
    assert SmoothTop1SVM(4, alpha=0.0)(x, y).item() == pytest.approx(F.cross_entropy(x, y).item(), rel=1e-5)


def test_dense_attention_is_softmax_attention_and_chunking_changes_nothing():
    q, k, v = torch.randn(50, 8), torch.randn(70, 8), torch.randn(70, 8)
    by_hand = torch.softmax(q @ k.T / math.sqrt(8), dim=1) @ v
    torch.testing.assert_close(dense_attention(q, k, v), by_hand, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dense_attention(q, k, v, chunk_size=7), by_hand, rtol=1e-5, atol=1e-5)


def test_cma_mil_dense_and_chunked_give_the_same_output():
    torch.manual_seed(0)
    dense = create_aggregator("cma_mil", in_dim=16, num_classes=2, magnifications=MAGS, dim=16).eval()
    chunked = create_aggregator("cma_mil", in_dim=16, num_classes=2, magnifications=MAGS, dim=16, chunk_size=5).eval()
    chunked.load_state_dict(dense.state_dict())
    bag = _bag(n_coarse=4)
    a, b = dense(bag, torch.tensor([1])), chunked(bag, torch.tensor([1]))
    torch.testing.assert_close(a.logits, b.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.aux_loss, b.aux_loss, rtol=1e-5, atol=1e-6)
    for mag in MAGS:
        torch.testing.assert_close(a.attention[mag], b.attention[mag], rtol=1e-5, atol=1e-6)


def test_local_attention_equals_dense_attention_masked_to_parent_child_pairs():
    bag = _bag(n_coarse=3)
    owner = ancestors(bag, "20x", "10x")  # each 20x key belongs to its 10x parent
    q, k, v = torch.randn(12, 8), torch.randn(48, 8), torch.randn(48, 8)
    mask = owner[None, :] == torch.arange(12)[:, None]
    assert mask.sum(1).tolist() == [4] * 12
    masked = F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=mask[None])[0]
    torch.testing.assert_close(local_attention(q, k, v, owner, keys_are_children=True), masked, rtol=1e-5, atol=1e-6)
    # from fine to coarse each 20x tile takes the value of its 5x ancestor
    up = ancestors(bag, "20x", "5x")
    assert up.tolist() == (torch.arange(48) // 16).tolist()
    v5 = torch.randn(3, 8)
    torch.testing.assert_close(local_attention(torch.randn(48, 8), torch.randn(3, 8), v5, up, False), v5[up])


def test_local_cross_attention_only_mixes_parents_and_children():
    torch.manual_seed(0)
    model = create_aggregator(
        "cma_mil", in_dim=16, num_classes=2, magnifications=MAGS, dim=16, cross_attention="local"
    ).eval()
    streams = {}
    hooks = [
        ca.register_forward_hook(lambda m, i, o, n=n: streams.__setitem__(n, o)) for n, ca in enumerate(model.cross)
    ]
    bag = _bag(n_coarse=4)
    model(bag)
    before = {n: s.clone() for n, s in streams.items()}
    changed = _bag(n_coarse=4)
    changed.features["20x"][37] += 5.0  # 20x tile 37: parent 10x tile 9, whose parent is 5x tile 2
    model(changed)
    for hook in hooks:
        hook.remove()
    moved = {n: (streams[n] - before[n]).abs().sum(1).nonzero().flatten().tolist() for n in streams}
    assert moved[0] == []  # 5x queries attend over 10x tiles: unchanged
    assert moved[1] == [9]  # 10x queries over 20x children: only the parent of tile 37
    assert moved[2] == [37]  # 20x queries over their 5x ancestor: only the tile itself (its own features)


def test_local_follows_links_through_magnifications_the_model_does_not_use():
    bag = _bag(n_coarse=2)
    model = create_aggregator(
        "cma_mil", in_dim=16, num_classes=2, magnifications=("5x", "20x"), dim=16, cross_attention="local"
    )
    assert model(bag).logits.shape == (1, 2)
    assert ancestors(bag, "20x", "5x").tolist() == (torch.arange(32) // 16).tolist()


@pytest.mark.parametrize("weighting", ["repo", "exp_raw"])
def test_cma_mil_bag_logits_are_the_attribute_weighted_instance_scores(weighting):
    torch.manual_seed(0)
    model = create_aggregator(
        "cma_mil", in_dim=16, num_classes=3, magnifications=MAGS, dim=16, attn_weighting=weighting
    ).eval()
    raw, scores = [], []
    model.attention.register_forward_hook(lambda m, i, o: raw.append(o))
    model.instance_scores.register_forward_hook(lambda m, i, o: scores.append(o))
    out = model(_bag(n_coarse=3))
    stream_logits = []
    for a, s in zip(raw, scores):
        alpha = torch.softmax(a, 0)
        w = torch.exp(alpha) if weighting == "repo" else torch.exp(a)
        stream_logits.append((s * w[:, None]).sum(0) / w.sum())
    fused = sum(b * ell for b, ell in zip(torch.softmax(model.stream_weights, 0), stream_logits)) + model.bias
    torch.testing.assert_close(out.logits[0], fused, rtol=1e-5, atol=1e-6)
    if weighting == "repo":  # weights exp(softmax) stay within [1, e]
        assert all(torch.exp(torch.softmax(a, 0)).max() <= math.e for a in raw)


def test_instance_loss_with_small_bags_and_subtyping():
    model = create_aggregator(
        "cma_mil", in_dim=16, num_classes=3, magnifications=("5x", "10x"), dim=16, k_sample=8, subtyping=True
    )
    out = model(_bag(n_coarse=1, mags=("5x", "10x")), torch.tensor([2]))  # 1 and 4 tiles, fewer than k_sample
    assert out.aux_loss is not None and torch.isfinite(out.aux_loss)
    total = model.loss(out, torch.tensor([2]))
    bag_part = F.cross_entropy(out.logits, torch.tensor([2]))
    assert total.item() == pytest.approx(0.7 * bag_part.item() + 0.3 * out.aux_loss.item(), rel=1e-6)
    assert model(_bag(), label=None).aux_loss is None


def test_clam_sb_svm_losses_and_abmil_magnification_choice():
    clam = create_aggregator("clam_sb", in_dim=16, num_classes=2, magnifications=MAGS, dims=(16, 8),
                             bag_loss="svm", inst_loss="svm")
    out = clam(_bag(), torch.tensor([0]))
    assert torch.isfinite(clam.loss(out, torch.tensor([0])))
    abmil = create_aggregator("abmil", in_dim=16, num_classes=2, magnifications=MAGS, magnification="10x", dim=8)
    out = abmil(_bag())
    assert set(out.attention) == {"10x"}
    assert out.attention["10x"].sum().item() == pytest.approx(1.0)
    stacked = create_aggregator("abmil", in_dim=16, num_classes=2, magnifications=MAGS, dim=8)(_bag())
    assert sum(a.sum().item() for a in stacked.attention.values()) == pytest.approx(1.0)
    mean = create_aggregator("mean_pool", in_dim=16, num_classes=2, magnifications=MAGS, dim=8)(_bag())
    assert torch.allclose(mean.attention["20x"], torch.full((48,), 1 / 48))


def test_bad_options_and_bags_give_clear_errors():
    with pytest.raises(PluginError, match="cma_mil needs two or more magnifications"):
        create_aggregator("cma_mil", in_dim=8, num_classes=2, magnifications=("20x",))
    with pytest.raises(PluginError, match="attn_weighting 'softmax' is not one of repo, exp_raw"):
        create_aggregator("cma_mil", in_dim=8, num_classes=2, magnifications=MAGS, attn_weighting="softmax")
    with pytest.raises(PluginError, match="magnification '40x' is not one of"):
        create_aggregator("abmil", in_dim=8, num_classes=2, magnifications=MAGS, magnification="40x")
    model = create_aggregator("cma_mil", in_dim=16, num_classes=2, magnifications=MAGS, cross_attention="local")
    bag = _bag()
    bag.parents = {m: torch.full_like(p, -1) for m, p in bag.parents.items()}
    with pytest.raises(ValueError, match="needs parent links from 10x to 5x"):
        model(bag)


def test_cma_mil_with_three_classes_says_that_subtyping_is_off(monkeypatch):
    said = []
    monkeypatch.setattr("cmamil.plugins.cma_mil.notice", said.append)
    create_aggregator("cma_mil", in_dim=8, num_classes=3, magnifications=MAGS, dim=8)
    create_aggregator("cma_mil", in_dim=8, num_classes=2, magnifications=MAGS, dim=8)
    create_aggregator("cma_mil", in_dim=8, num_classes=3, magnifications=MAGS, dim=8, subtyping=True)
    assert len(said) == 1 and said[0].startswith("cma_mil with 3 classes: subtyping is off, as in the reference code")


def test_docs_list_every_departure_from_the_reference_and_abmil_names_its_clam_additions():
    from pathlib import Path

    from cmamil.plugins import abmil

    guide = (Path(__file__).resolve().parents[1] / "docs" / "training-mil.md").read_text()
    departures = guide[guide.index("**Departures from the reference code**"):guide.index("### Who owns the loss")]
    for item in ("*`cross_attention=local`* is a cmamil extension", "*`attn_weighting=exp_raw`*",
                 "changes the\n  instance loss too", "*Out-of-class instance targets are 0.*",
                 "*`dropout` is a probability*"):
        assert item in departures, item
    assert "CLAM-style additions" in abmil.__doc__
