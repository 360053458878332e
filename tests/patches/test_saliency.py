"""Grad-CAM and attention rollout: a hand-computed CAM, map sizes, non-constant maps for every model family."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cmamil.models import DataConfig, create_model
from cmamil.evaluation.saliency import attention_rollout, grad_cam, overlay_heatmap, saliency_maps, select_groups


class LinearCAMNet(nn.Module):
    """conv → ReLU → global average pool → linear: Grad-CAM here equals the class activation map."""

    def __init__(self) -> None:
        super().__init__()
        self.data_config = DataConfig(input_size=(3, 8, 8))
        self.num_features = 2
        self.conv = nn.Conv2d(3, 2, 1, bias=False)
        self.act = nn.ReLU()
        self.head = nn.Linear(2, 2, bias=False)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x)).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def test_grad_cam_equals_the_hand_computed_class_activation_map():
    model = LinearCAMNet()
    with torch.no_grad():
        model.conv.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).view(2, 3, 1, 1))
        model.head.weight.copy_(torch.tensor([[2.0, -1.0], [-1.0, 3.0]]))
    x = torch.rand(2, 3, 8, 8)
    maps = grad_cam(model, x, torch.tensor([0, 1]))
    features = x[:, :2].clamp(min=0)  # the ReLU'd 1×1 conv picks channels 0 and 1
    for i, cls in enumerate((0, 1)):
        cam = (model.head.weight[cls].view(2, 1, 1) / 64 * features[i]).sum(0).clamp(min=0).detach()
        expected = (cam - cam.min()) / (cam.max() - cam.min())
        torch.testing.assert_close(maps[i], expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "name, options, size, method",
    [
        ("example_cnn", {"img_size": 32}, 32, "gradcam"),
        ("timm:resnet18", {}, 48, "gradcam"),
        ("swin_tiny", {"img_size": 64, "window_size": 2}, 64, "gradcam"),
        ("deit_small", {"img_size": 64, "depth": 2}, 64, "rollout"),
    ],
)
def test_maps_have_the_image_size_and_are_not_constant(name, options, size, method):
    torch.manual_seed(0)
    model = create_model(name, num_classes=2, **options).eval()
    x = torch.randn(3, 3, size, size)
    maps, used = saliency_maps(model, x)
    assert used == method
    assert maps.shape == (3, size, size)
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0
    assert (maps.flatten(1).std(1) > 1e-3).all()


def test_rollout_of_a_vit_follows_its_token_grid():
    torch.manual_seed(0)
    model = create_model("deit_small", num_classes=2, img_size=64, depth=2).eval()
    x = torch.randn(2, 3, 64, 64)
    maps = attention_rollout(model, x)
    assert maps.shape == (2, 64, 64)
    # 16-px patches: upsampling a 4×4 grid bilinearly keeps each patch centre at its token's value
    centres = maps[:, 8::16, 8::16]
    assert centres.shape == (2, 4, 4) and len(torch.unique(centres.round(decimals=4))) > 4
    assert model.model.blocks[0].attn.fused_attn == model.model.blocks[1].attn.fused_attn  # state restored


def test_groups_and_overlay():
    y_true = np.array([1, 1, 0, 0, 1, 0])
    probs = np.array([[0.1, 0.9], [0.6, 0.4], [0.3, 0.7], [0.8, 0.2], [0.4, 0.6], [0.45, 0.55]])
    groups = select_groups(y_true, probs, positive=1, per_group=5)
    assert groups["true_positive"].tolist() == [0, 4]
    assert groups["false_positive"].tolist() == [2, 5]
    assert groups["false_negative"].tolist() == [1]
    image = np.zeros((46, 70, 3), dtype=np.uint8)
    heat = np.zeros((8, 8))
    heat[:, 4:] = 1.0
    blended = overlay_heatmap(image, heat)
    assert blended.shape == (46, 70, 3) and blended.dtype == np.uint8
    left, right = blended[:, :20].reshape(-1, 3).mean(0), blended[:, -20:].reshape(-1, 3).mean(0)
    assert right[0] > 50 > left[0] and left[2] > 50 > right[2]  # jet: hot is red, cold is blue
