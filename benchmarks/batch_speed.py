"""Edits per minute against batch size (EditPipeline.edit_batch, data.batch_size), on the CPU.

    python benchmarks/batch_speed.py --edits 8 --sizes 1 2 4 8 [--threads 1] [--lam 1.0]

The bundled toy model (`builtin:toyworld`, 64 px, the quickstart's pipeline: experiments/quickstart.yaml) edits the
same `--edits` toy 'val' edits (text, pose, scribble, text + pose in turn) at each batch size; edits of one batch
share a UNet call when they wait at the same timestep with the same conditioning layout (the same ControlNet maps),
so a batch of one kind gains most. Prints wall seconds, edits per minute, the real UNet calls and the largest pixel
difference from batch size 1 (float rounding of larger UNet batches).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edits", type=int, default=8)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lam", type=float, default=None, help="lam of every edit (default: the quickstart's 0.8)")
    parser.add_argument("--kinds", nargs="+", default=None, help="toy edit kinds (default: all four in turn)")
    args = parser.parse_args()

    import torch

    from framework.io.manifests import load_request
    from framework.pipeline import EditPipeline
    from framework.toy.datasets import ToyEditDataModule

    torch.set_num_threads(args.threads)
    settings = {} if args.lam is None else {"lam": args.lam}
    pipe = EditPipeline.from_config(ROOT / "experiments" / "quickstart.yaml", **settings)
    data = ToyEditDataModule(edits=args.edits, kinds=args.kinds, split="val", size=64)
    requests = [load_request(spec, None) for spec in data.specs]
    reference = None
    print(f"{len(requests)} toy 'val' edits, {args.threads} thread(s), lam {pipe.lam}")
    print("| batch size | seconds | edits / min | UNet calls | UNet samples | max |pixel - batch 1| |")
    print("|---|---|---|---|---|---|")
    with torch.no_grad():
        for size in args.sizes:
            start, results, calls, samples = time.perf_counter(), [], 0, 0
            for i in range(0, len(requests), size):
                chunk = requests[i:i + size]
                out = pipe.edit_batch(chunk)
                for r in out:
                    if isinstance(r, Exception):
                        raise r
                results += out
                if len(chunk) > 1:
                    calls, samples = calls + pipe.last_batch["unet_calls"], samples + pipe.last_batch["unet_samples"]
                else:
                    calls += sum(out[0].record["unet_calls"].values())
                    samples += sum(out[0].record["unet_evaluations"].values())
            seconds = time.perf_counter() - start
            edits = [r.edit for r in results]
            reference = reference or edits
            diff = max(float((a - b).abs().max()) for a, b in zip(reference, edits))
            print(f"| {size} | {seconds:.1f} | {60 * len(edits) / seconds:.1f} | {calls} | {samples} | {diff:.2e} |",
                  flush=True)


if __name__ == "__main__":
    main()
