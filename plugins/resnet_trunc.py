"""ResNet-50 cut after its third stage (He et al., 2016): CLAM's `resnet50_trunc` encoder, 1024-d features.

The first three stages of torchvision's ResNet-50 (timm's `resnet50.tv_in1k`, the same modules and key names),
then global average pooling. A local weights file of a whole torchvision or timm ResNet-50 loads key for key:
the fourth stage and the classifier in the file are ignored, every other key must fit.
"""

from __future__ import annotations

from typing import Any

import timm
from torch import nn

from cmamil.models import load_local_weights, small_variant
from cmamil.timm_models import HUB, TimmPatchModel, weights_kwargs

__all__ = ["resnet50_trunc"]

ARCH = "resnet50.tv_in1k"


@small_variant(img_size=64)
def resnet50_trunc(*, num_classes: int = 0, weights: str | None = None, **options: Any) -> TimmPatchModel:
    """ResNet-50 up to layer3, average-pooled (8,543,296 parameters without a classifier)."""
    img_size = options.pop("img_size", None)  # a CNN takes any size: only the data config changes
    hub = weights is not None and str(weights) == HUB
    model = timm.create_model(ARCH, num_classes=0, **(weights_kwargs(weights) if hub else {}), **options)
    model.layer4 = nn.Identity()
    model.num_features = model.head_hidden_size = model.layer3[-1].conv3.out_channels
    model.feature_info = model.feature_info[:-1]
    model.reset_classifier(num_classes)
    if not hub:
        load_local_weights(model, weights, name="resnet50_trunc", classifier="fc", dropped=("layer4.",))
    config = dict(timm.data.resolve_model_data_config(model))
    if img_size:
        config["input_size"] = (3, int(img_size), int(img_size))
    return TimmPatchModel(model, config)
