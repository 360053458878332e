"""Training and inference throughput of MIL aggregators on synthetic nested bags: bags/s and peak memory.

Each bag has N tiles at 20x with their 10x (N/4) and 5x (N/16) parents, E-dimensional features. One training
step is forward + instance loss + backward + Adam step on one bag, as `cmamil train` does. Every
(model, size) runs in its own process so that peak memory is its own: on CUDA the peak allocated by torch,
on CPU the growth of the process's peak resident set over its state after building the model and bag.

    python benchmarks/train_throughput.py                      # 1k/4k/16k tiles, E=512, all threads
    python benchmarks/train_throughput.py --sizes 1024 --threads 1 --iters 2
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

CONFIGS = {
    "cma_mil dense": ("cma_mil", {"cross_attention": "dense"}),
    "cma_mil local": ("cma_mil", {"cross_attention": "local"}),
    "abmil": ("abmil", {}),
}


def worker(config: str, size: int, dim: int, iters: int, device_name: str, threads: int) -> dict:
    """Time `iters` training steps and inference passes of one configuration on one bag size."""
    import torch

    from cmamil.aggregators import aggregator_loss, create_aggregator, forward_bag
    from cmamil.environment import resolve_device
    from cmamil.synthetic import nested_bag

    if threads:
        torch.set_num_threads(threads)
    device = resolve_device(device_name)
    name, options = CONFIGS[config]
    bag = nested_bag(size // 16, dim, ("5x", "10x", "20x"), generator=torch.Generator().manual_seed(0)).to(device)
    model = create_aggregator(name, in_dim=dim, num_classes=2, magnifications=bag.magnifications, **options).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4, weight_decay=1e-5)
    label = torch.tensor([1], device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def train_step() -> None:
        output = forward_bag(model, bag, label)
        loss = aggregator_loss(model, output, label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def infer() -> None:
        with torch.no_grad():
            forward_bag(model, bag)

    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model.train()
    train_step()  # warm-up
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        train_step()
    sync()
    train_s = (time.perf_counter() - start) / iters
    model.eval()
    infer()
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        infer()
    sync()
    infer_s = (time.perf_counter() - start) / iters
    if device.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kib) / 1024
    return {"config": config, "tiles_20x": size, "train_bags_per_s": 1 / train_s, "infer_bags_per_s": 1 / infer_s,
            "peak_mib": peak_mib, "device": str(device), "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1024,4096,16384", help="comma-separated 20x tile counts per bag")
    parser.add_argument("--dim", type=int, default=512, help="feature size E")
    parser.add_argument("--iters", type=int, default=3, help="timed steps per configuration (after one warm-up)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated configurations")
    parser.add_argument("--worker", nargs=2, metavar=("CONFIG", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.dim, args.iters, args.device, args.threads)))
        return
    print(f"{'configuration':<16}{'20x tiles':>10}{'train bags/s':>14}{'infer bags/s':>14}{'peak MiB':>10}  device")
    for size in (int(s) for s in args.sizes.split(",")):
        for config in args.configs.split(","):
            command = [sys.executable, __file__, "--worker", config, str(size), "--dim", str(args.dim),
                       "--iters", str(args.iters), "--device", args.device, "--threads", str(args.threads)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                reason = (done.stderr.strip().splitlines() or ["failed"])[-1]
                print(f"{config:<16}{size:>10}  failed: {reason}", flush=True)
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{config:<16}{size:>10}{r['train_bags_per_s']:>14.2f}{r['infer_bags_per_s']:>14.2f}"
                  f"{r['peak_mib']:>10.0f}  {r['device']} ({r['threads']} threads)", flush=True)


if __name__ == "__main__":
    main()
