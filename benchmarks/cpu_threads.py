"""Edit time on the CPU with one torch thread against all cores, on an idle and on a loaded machine.

    python -m benchmarks.cpu_threads [--request text_000] [--repeats 3] [--steps 25] [--json out.json]

One bundled toy-world edit (`builtin:toyworld`, the quickstart's model and settings, 64 px) is run
in this process with `torch.set_num_threads(1)` and with `torch.set_num_threads(os.cpu_count())`,
interleaved, `--repeats` times each, first with the machine as it is (idle, or shared: the load
average is printed), then while one extra busy process per core spins (the situation of a shared CI runner or a laptop compiling in the
background). The table gives the median seconds and the ratio all-threads / one-thread side by side;
`framework.lightning.threads.default_threads` reads the machine's load the same way to choose the default.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402


def _spin(stop) -> None:
    """A busy core until `stop` is set."""
    torch.set_num_threads(1)
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def _module(steps: Optional[int], output_dir: str):
    from conditioners import ControlNetConditioner
    from framework.backbones.loading import TOYWORLD
    from framework.backbones.sd import StableDiffusion
    from framework.core.settings import GuidanceConfig, ITOConfig, MaskConfig, SamplingConfig
    from framework.lightning.cli import quiet_libraries
    from framework.lightning.module import EditModule

    quiet_libraries()
    default_t_u, default_steps = ITOConfig().update_steps, SamplingConfig().steps
    steps = steps or default_steps
    t_u = round(steps * default_t_u / default_steps)  # the default t_u, scaled to --steps
    module = EditModule(StableDiffusion(TOYWORLD), [ControlNetConditioner("pose", TOYWORLD),
                                                    ControlNetConditioner("scribble", TOYWORLD)],
                        sampling=SamplingConfig(steps=steps), mask=MaskConfig(threshold=0.5),
                        ito=ITOConfig(update_steps=t_u), guidance=GuidanceConfig(update_steps=t_u),
                        output_dir=output_dir)
    module.setup("fit")
    return module


def _request(name: str):
    from framework.io.manifests import load_manifest, load_request

    specs = {s.id: s for s in load_manifest(ROOT / "experiments" / "examples" / "manifest.yaml")}
    return load_request(specs[name], None)


def _time_edit(module, request, threads: int) -> float:
    torch.set_num_threads(threads)
    start = time.perf_counter()
    module.edit(request)
    return time.perf_counter() - start


def measure(module, request, repeats: int, cores: int, name: str) -> dict[str, list[float]]:
    """Seconds per edit for 1 and `cores` threads, interleaved (the order flips every repeat)."""
    times: dict[str, list[float]] = {"1": [], str(cores): []}
    for r in range(repeats):
        for threads in ((1, cores) if r % 2 == 0 else (cores, 1)):
            times[str(threads)].append(_time_edit(module, request, threads))
            print(f"  {name}, {threads} thread(s): {times[str(threads)][-1]:.2f} s "
                  f"(load average {os.getloadavg()[0]:.1f})", flush=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--request", default="text_000", help="id of a request of experiments/examples")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the product's; t_u scales with it)")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args()

    cores = os.cpu_count() or 1
    module = _module(args.steps, tempfile.mkdtemp(prefix="threads-"))
    request = _request(args.request)
    _time_edit(module, request, 1)  # warm-up: first calls allocate
    rows = {}
    load_before = os.getloadavg()[0]
    rows["as found"] = measure(module, request, args.repeats, cores, "as found")
    stop = mp.Event()
    spinners = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(cores)]
    for p in spinners:
        p.start()
    try:
        time.sleep(1.0)
        rows["+1 busy process per core"] = measure(module, request, args.repeats, cores, "loaded")
    finally:
        stop.set()
        for p in spinners:
            p.join()

    print(f"{cores} cores, request {args.request}, {module.sampling.steps} steps, {args.repeats} repeats; "
          f"1-min load average before the first rows: {load_before:.2f}")
    print(f"| machine | 1 thread (s) | {cores} threads (s) | {cores} threads / 1 thread |")
    print("|---|---|---|---|")
    for name, times in rows.items():
        one, many = statistics.median(times["1"]), statistics.median(times[str(cores)])
        print(f"| {name} | {one:.2f} | {many:.2f} | {many / one:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({"cores": cores, "load_before": load_before, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
