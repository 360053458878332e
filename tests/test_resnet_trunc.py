"""resnet50_trunc: torchvision's ResNet-50 up to layer3, loading whole or truncated torchvision state dicts."""

from __future__ import annotations

import pytest
import torch
import torchvision

from cmamil.errors import InputError
from cmamil.models import create_model


@pytest.fixture(scope="module")
def torchvision_resnet50(tmp_path_factory):
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    path = tmp_path_factory.mktemp("weights") / "resnet50.pth"
    torch.save(model.state_dict(), path)
    return model, path


def truncated_forward(model: torchvision.models.ResNet, x: torch.Tensor) -> torch.Tensor:
    for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3"):
        x = getattr(model, name)(x)
    return x.mean(dim=(2, 3))


def test_loads_torchvision_weights_key_for_key_and_equals_its_truncated_forward(torchvision_resnet50):
    reference, path = torchvision_resnet50
    model = create_model("resnet50_trunc", weights=str(path)).eval()
    assert model.num_features == 1024 and model.data_config.interpolation == "bilinear"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = truncated_forward(reference, x)
        assert torch.allclose(model.forward_features(x), expected, atol=1e-5)
        random = create_model("resnet50_trunc").eval().forward_features(x)
    assert not torch.allclose(random, expected, atol=1e-2)


def test_a_file_without_layer4_loads_and_a_foreign_file_is_one_clear_error(torchvision_resnet50, tmp_path):
    reference, _ = torchvision_resnet50
    cut = tmp_path / "trunc.pth"
    torch.save({k: v for k, v in reference.state_dict().items() if not k.startswith(("layer4.", "fc."))}, cut)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        features = create_model("resnet50_trunc", weights=str(cut)).eval().forward_features(x)
        assert torch.allclose(features, truncated_forward(reference, x), atol=1e-5)
    foreign = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), foreign)
    with pytest.raises(InputError, match="do not fit model 'resnet50_trunc'"):
        create_model("resnet50_trunc", weights=str(foreign))
