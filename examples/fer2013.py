"""Reproduce the occlusion analysis of Nishime et al. on FER-2013 (or on synthetic faces).

    python examples/fer2013.py                      # synthetic faces, train, analyse (README: timings)
    python examples/fer2013.py --quick              # small and fast, what the tests run
    python examples/fer2013.py --csv fer2013.csv    # Kaggle's FER-2013 csv (PublicTest = test)
    python examples/fer2013.py --data-dir fer2013/  # train/<class>/*.png, test/<class>/*.png
    python examples/fer2013.py --weights fer2013-output/weights.pt   # skip training
    torchrun --nproc-per-node 2 examples/fer2013.py --distributed   # shard the sweep

A CNN with GCN + ZCA preprocessing is trained (or loaded), every test image is occluded area by
area on a 4x4 grid with fills 0.0 .. 1.0 (the paper's Figs 4-9), and only the mouth areas
{10, 11} or eyes and mouth {6, 7, 10, 11} are kept visible (Tables 3 and 4); the keep and
remove perturbation curves through those two points compare the sweep's ranking with random
orders. Everything is written to the output folder (default ``fer2013-output/``): report.md,
report.json, curves.csv, curves.json, weights.pt, sweep.npz and PNG figures.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

# Set before torch loads OpenMP: idle OpenMP workers then sleep instead of spinning. On a busy
# or shared machine, spinning workers burn the cores the working ones need (measured on a
# loaded 2-core machine: the sweep ran 3x slower with the default active wait). Thread count
# stays torch's default; a value the user exported wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The support package lives next to this file; make it importable however the script is run.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fer_paper.pipeline import RunConfig, run


def parse_args(argv: Sequence[str] | None = None) -> RunConfig:
    """The `RunConfig` of the command line `argv` (default: ``sys.argv[1:]``)."""
    parser = argparse.ArgumentParser(
        prog="fer2013.py",
        description=(
            "Occlusion analysis of a FER-2013 CNN (Nishime et al.): 4x4 grid sweep, "
            "keep-only tables. Without --csv/--data-dir it uses built-in synthetic faces."
        ),
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--csv", type=Path, help="Kaggle's fer2013.csv (emotion, pixels, Usage)")
    source.add_argument(
        "--data-dir", type=Path, help="folder with train/<class>/*.png and test/<class>/*.png"
    )
    parser.add_argument(
        "--test-split",
        choices=("PublicTest", "PrivateTest"),
        default="PublicTest",
        help="csv rows used as the test set (default PublicTest, the paper's 3,588 images)",
    )
    parser.add_argument(
        "--weights", type=Path, help="state_dict from an earlier run; skips training"
    )
    parser.add_argument("--out", type=Path, default=Path("fer2013-output"), help="output folder")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    parser.add_argument(
        "--quick", action="store_true", help="small data, few epochs (what the tests run)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--skip-bad-rows",
        action="store_true",
        help="skip malformed csv rows (with a warning counting them) instead of failing",
    )
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="run under torchrun: the sweep is sharded across ranks, rank 0 writes outputs",
    )
    parser.add_argument("--epochs", type=int, help="override the number of training epochs")
    parser.add_argument("--batch-size", type=int, default=64, help="training minibatch size")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars or messages")
    args = parser.parse_args(argv)
    try:
        return RunConfig(
            out=args.out,
            csv=args.csv,
            data_dir=args.data_dir,
            test_split=args.test_split,
            weights=args.weights,
            device=args.device,
            quick=args.quick,
            seed=args.seed,
            skip_bad_rows=args.skip_bad_rows,
            distributed=args.distributed,
            epochs=args.epochs,
            batch_size=args.batch_size,
            progress=not args.no_progress,
        )
    except ValueError as error:
        parser.error(str(error))


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
