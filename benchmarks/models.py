"""Print one efficiency table for every registered patch model: params, GMACs, peak memory, throughput, latency.

The figures come from `cmamil.evaluation.efficiency.compare_models`, the measurement `cmamil models compare`
uses: each model in its own subprocess, so peak memory is that model's alone (CUDA max allocated on a GPU; on
CPU the rise of resident memory over its level before the model was built, weights plus the batch pass);
throughput is the median of timed batches after warm-up; MACs from torch.utils.flop_counter (FLOPs / 2).

    python benchmarks/models.py --device cpu --threads 1 --repeats 4 --model-option s4d:patch_size=4
    python benchmarks/models.py --device cuda --models deit_small,mscvit_t,s4d
"""

from __future__ import annotations

import argparse
import sys

import yaml


def parse_model_options(items: list[str]) -> dict[str, dict[str, object]]:
    """'s4d:patch_size=4' items → {'s4d': {'patch_size': 4}} (values read as YAML scalars)."""
    options: dict[str, dict[str, object]] = {}
    for item in items:
        name, _, assignment = item.rpartition(":")
        key, _, value = assignment.partition("=")
        if not (name and key and value):
            raise SystemExit(f"--model-option must look like NAME:KEY=VALUE, got '{item}'")
        options.setdefault(name, {})[key] = yaml.safe_load(value)
    return options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to run")
    parser.add_argument("--models", default="", help="comma-separated model names (default: every registered one)")
    parser.add_argument("--input-size", type=int, default=0, help="input side passed as img_size (0: model default)")
    parser.add_argument("--num-classes", type=int, default=1000, help="classifier outputs (1000: published counts)")
    parser.add_argument("--batch", type=int, default=32, help="batch size of the throughput measurement")
    parser.add_argument(
        "--repeats", type=int, default=20, help="timed batch-1 calls (median); batch calls: max(3, repeats // 4)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument(
        "--model-option", action="append", default=[], help="NAME:KEY=VALUE option for one model, repeatable"
    )
    args = parser.parse_args()

    from cmamil import registry
    from cmamil.evaluation.efficiency import compare_models, format_efficiency

    names = [n for n in args.models.split(",") if n] or registry.models.names()
    print(f"measuring {', '.join(names)} ...", file=sys.stderr, flush=True)
    rows = compare_models(names, [args.input_size or None], batch_size=args.batch, device=args.device,
                          num_classes=args.num_classes, options=parse_model_options(args.model_option),
                          repeats=args.repeats, threads=args.threads)
    print(format_efficiency(rows))


if __name__ == "__main__":
    main()
