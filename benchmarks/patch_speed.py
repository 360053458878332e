"""Print the speed figures `cmamil evaluate` reports (latency at batch 1, throughput, peak memory) per model.

    python benchmarks/patch_speed.py deit_small swin_tiny timm:resnet18 --batch-size 32 --device auto

Random weights and a random input at each model's own input size: the figures measure the architecture only.
"""

from __future__ import annotations

import argparse

import torch

from cmamil.environment import resolve_device
from cmamil.models import count_parameters, create_model
from cmamil.evaluation.speed import measure_speed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="registered model names or timm:<arch>")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--amp", action="store_true", help="float16 autocast on CUDA")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"{'model':<28}{'params':>12}{'input':>8}{'ms/image @1':>13}{'images/s':>11}{'peak MiB':>10}  device")
    for name in args.models:
        model = create_model(name, num_classes=args.classes).to(device)
        size = model.data_config.input_size
        speed = measure_speed(model, torch.randn(*size), batch_size=args.batch_size, device=device, amp=args.amp)
        print(f"{name:<28}{count_parameters(model):>12,}{size[-1]:>8}{speed['latency_ms_per_image']:>13.2f}"
              f"{speed['throughput_images_per_s']:>11.1f}{speed['peak_memory_mb']:>10.0f}  {speed['device']}")


if __name__ == "__main__":
    main()
