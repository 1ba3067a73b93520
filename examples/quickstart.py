"""Quickstart: score the bundled hh-rlhf pairs with the bundled small model, offline, and show the extremes.

    python examples/quickstart.py [--rows N] [--output scores.jsonl]

The bundled model (examples/tiny-hh-model) is a 1.4M-parameter Llama-architecture model trained by
examples/train_tiny_model.py on the same hh-rlhf text; swap in your own SFT checkpoint for real use.
"""

import argparse
import warnings
from pathlib import Path

import ches

HERE = Path(__file__).resolve().parent
warnings.filterwarnings("ignore", category=FutureWarning, module="pyarrow")  # raised inside datasets' sort


def show(title: str, rows) -> None:
    print(f"\n{title}")
    for row in rows:
        chosen = row["chosen"][-60:].replace("\n", " ")
        rejected = row["rejected"][-60:].replace("\n", " ")
        print(f"  ln_ches={row['ln_ches']:+9.3f}  ches={row['ches']:+12.1f}  ...{chosen!r}  vs  ...{rejected!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description="Score the bundled hh-rlhf data with the bundled model.")
    parser.add_argument("--rows", type=int, default=None, help="score only the first N rows")
    parser.add_argument("--output", type=Path, default=None, help="also write the scored rows (.jsonl/.parquet/.csv)")
    args = parser.parse_args()

    data = str(HERE / "data" / "hh-rlhf-harmless-base-test.jsonl.gz")
    if args.rows:
        import datasets

        data = datasets.load_dataset("json", data_files=data, split=f"train[:{args.rows}]")
    scored = ches.score(data, str(HERE / "tiny-hh-model"))
    kept = scored.filter(lambda row: row["ches_skip"] is None).sort("ln_ches", reverse=True)
    show("Most displacement-prone pairs (highest length-normalized CHES):", kept.select(range(3)))
    show("Least displacement-prone pairs (lowest length-normalized CHES):", kept.select(range(len(kept) - 3, len(kept))))
    if args.output:
        writer = {".parquet": scored.to_parquet, ".csv": scored.to_csv}.get(args.output.suffix, scored.to_json)
        writer(str(args.output))
        print(f"\nwrote {len(scored)} scored rows to {args.output}")


if __name__ == "__main__":
    main()
