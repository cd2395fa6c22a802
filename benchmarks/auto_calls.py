"""Defaults on one image, as a user meets them: a fresh process per engine setting, three
calls of ``op.sweep(model, image, op.grid(224, 224, rows=14, cols=14), fills=(0.0,))`` on the
same model, then the forward limit (the best plain batched forwards of the 196 prebuilt
occluded images, over batch sizes and memory formats) in the same process.

Run: ``python benchmarks/auto_calls.py [--json PATH] [model ...]`` (models: resnet18,
mobilenetv2, convnext_t: the architecture suite's
models; all by default). Prints one JSON line per (model, engine) with each
call's seconds and engine, and the forward limit's seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CALLS = 3


def _child(model_name: str, engine: str) -> dict[str, object]:
    sys.path.insert(0, str(HERE.parent / "tests"))
    sys.path.insert(0, str(HERE))
    import torch
    from models import ARCHITECTURES, photograph, signal_preserving

    import occlusion_probe as op

    # The architecture suite's zoo-sized models: He-initialised, BatchNorm statistics
    # measured on a photograph (so outputs depend on the image), one photograph.
    case = next(case for case in ARCHITECTURES if case.id == model_name)
    image = photograph(224, 224)
    torch.manual_seed(0)
    model = signal_preserving(case.build(), image).eval()
    regions = op.grid(224, 224, rows=14, cols=14)
    calls = []
    for _ in range(CALLS):
        start = time.perf_counter()
        result = op.sweep(model, image, regions, fills=(0.0,), engine=engine, progress=False)
        calls.append(
            {
                "seconds": time.perf_counter() - start,
                "engine": result.engine,
                "note": result.engine_note[:300],
            }
        )
    occluded = torch.where(regions.masks[:, None], torch.zeros(()), image[0][None])
    best = float("inf")
    with torch.inference_mode():
        for channels_last in (False, True):
            prebuilt = occluded.contiguous(
                memory_format=torch.channels_last if channels_last else torch.contiguous_format
            )
            for size in (8, 16, 32):
                model(prebuilt[:size])  # warm-up
                start = time.perf_counter()
                for i in range(0, prebuilt.shape[0], size):
                    model(prebuilt[i : i + size])
                best = min(best, time.perf_counter() - start)
    return {"model": model_name, "engine": engine, "calls": calls, "forward_limit": best}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="*", default=["resnet18", "mobilenetv2", "convnext_t"])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", nargs=2)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(*args.child)))
        return
    rows = []
    for name in args.models:
        for engine in ("auto", "dense", "incremental"):
            done = subprocess.run(
                [sys.executable, __file__, "--child", name, engine],
                capture_output=True,
                text=True,
                check=True,
            )
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row["loadavg"] = os.getloadavg()
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.json:
        cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model_name = next(
            (line.split(":", 1)[1].strip() for line in cpu.splitlines() if "Model name" in line),
            platform.processor(),
        )
        import torch

        args.json.write_text(
            json.dumps(
                {
                    "cpu": model_name,
                    "torch": torch.__version__,
                    "date": time.strftime("%Y-%m-%d"),
                    "command": "python benchmarks/auto_calls.py " + " ".join(args.models),
                    "rows": rows,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
