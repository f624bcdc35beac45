"""Quality gates of the toy model: each measured value printed against its gate.

    python benchmarks/toyworld_gates.py [--model framework/assets/toyworld] [--classifier ...] [--quick]
        [--diagnose-shape]

All scenes are held out (seeds below one million; training uses seeds from one million on).
Measures are defined in `framework/toymodel/gates.py`. The pose gate is relative: the figure IoU
must be at least twice the IoU with a mismatched figure (what a model that ignores the map gets)
and at least 0.4; the arm-pose class read by the classifier must beat its 4-class chance twice.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch

from framework.toymodel.classifier import ToyClassifier
from framework.toymodel.gates import (
    ToyModel,
    caption_distances,
    measure_pose,
    measure_scribble,
    measure_text,
    measure_vae,
    shape_by_noise_level,
)
from framework.toyworld.scenes import SHAPES

DEFAULT_MODEL = ROOT / "framework" / "assets" / "toyworld"


def gates(m: dict) -> list[tuple[str, float, str, bool]]:
    """(name, value, gate, passed) rows."""
    rows = [
        ("VAE PSNR, held-out scenes (dB)", m["vae_psnr"], ">= 26", m["vae_psnr"] >= 26),
        ("VAE colour: renders - reconstructions (points)", 100 * m["vae_colour_gap"], "<= 3",
         100 * m["vae_colour_gap"] <= 3),
        ("VAE shape: renders - reconstructions (points)", 100 * m["vae_shape_gap"], "<= 3",
         100 * m["vae_shape_gap"] <= 3),
        ("Inversion + reconstruction, 25 steps, CFG 1 (dB)", m["inversion_psnr"], ">= 24", m["inversion_psnr"] >= 24),
        ("Text samples: prompted colour (%)", 100 * m["text_colour"], ">= 90", m["text_colour"] >= 0.9),
        ("Text samples: prompted shape (%)", 100 * m["text_shape"], ">= 80", m["text_shape"] >= 0.8),
    ]
    if "pose_iou" in m:
        ok = m["pose_iou"] >= max(0.4, 2 * m["pose_iou_mismatched"])
        rows.append((f"Pose samples: figure IoU (mismatched: {m['pose_iou_mismatched']:.2f})", m["pose_iou"],
                     ">= max(0.4, 2 x mismatched)", ok))
        rows.append(("Pose samples: arm-pose class (%)", 100 * m["pose_class"], ">= 50", m["pose_class"] >= 0.5))
    if "scribble_edge_iou" in m:
        rows.append((f"Scribble samples: edge IoU, 1 px tolerance (mismatched: {m['scribble_edge_iou_mismatched']:.2f})",
                     m["scribble_edge_iou"], ">= 0.5",
                     m["scribble_edge_iou"] >= 0.5))
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="folder with sd/ and controlnet-*/")
    parser.add_argument("--classifier", type=Path, default=None, help="default: <model>/classifier")
    parser.add_argument("--quick", action="store_true", help="a quarter of the samples")
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--json", type=Path, default=None, help="also write the measures here")
    parser.add_argument("--diagnose-shape", action="store_true",
                        help="also: prompted-shape accuracy by the noise level sampling starts from, and text-encoder "
                             "distances between captions one shape or colour word apart")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    q = 4 if args.quick else 1
    model = ToyModel(args.model)
    classifier = ToyClassifier.from_pretrained(args.classifier or args.model / "classifier")
    measures, start = {}, time.perf_counter()
    measures.update(measure_vae(model, classifier, n=64 // q, invert_n=16 // q))
    measures.update(measure_text(model, classifier, n=48 // q, guidance=args.guidance))
    if (args.model / "controlnet-pose").exists():
        measures.update(measure_pose(model, classifier, n=32 // q, guidance=args.guidance))
    if (args.model / "controlnet-scribble").exists():
        measures.update(measure_scribble(model, n=32 // q, guidance=args.guidance))
    print(f"toy model {args.model} ({time.perf_counter() - start:.0f} s)")
    print(f"{'measure':62s} {'value':>8s}  gate")
    for name, value, gate, ok in gates(measures):
        print(f"{name:62s} {value:8.2f}  {gate:28s} {'pass' if ok else 'FAIL'}")
    if args.diagnose_shape:
        levels = shape_by_noise_level(model, classifier, n=36 // q, guidance=args.guidance)
        distances = caption_distances(model)
        measures.update({"shape_by_steps_left": levels, "caption_distances": distances})
        print("prompted shape when sampling starts from the render noised k of 25 steps before the end "
              f"(rows true, columns drawn: {', '.join(SHAPES)}):")
        for k, row in levels.items():
            print(f"  k = {k:2d}: {100 * row['shape']:5.1f} %  confusion {row['confusion']}")
        print("text encoder, summed per-token distance of one swapped word: "
              + ", ".join(f"{k} {v:.1f}" for k, v in distances.items()))
    print("classifier on renders: " + ", ".join(f"{k} {100 * measures['render_' + k]:.0f}%"
                                                for k in ("colour", "shape", "pose")))
    if args.json:
        args.json.write_text(json.dumps(measures, indent=2))
    return measures


if __name__ == "__main__":
    main()
