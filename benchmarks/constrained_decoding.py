"""Constrained beam search: ours vs transformers' ``generate`` + a prefix-constraint processor.

Same model, same prompts, same beam width. Prints users/second of each, the ratio, the share
of our decode time spent in constraint work, and whether both return the same groups.

    python benchmarks/constrained_decoding.py --model data/06_models/sft --n 64 --beams 20

``--our-batch`` takes several sizes (``--our-batch 32 64 128 --skip-hf``): each is timed
``--repeats`` times (the fastest counts) and compared with the first, and their groups with
each other. ``--profile`` ends with torch.profiler's table of the ops ours spends its time in.

The model defaults to the SFT model (run `kedro run --pipelines=backbone,prompts,sft` first);
prompts are the first ``--n`` rows of ``--rows`` (the official test split).
"""

from __future__ import annotations

import argparse
import logging
import time

import pandas as pd
import torch

from rere_pipeline.recsys.backbone import load_backbone
from rere_pipeline.recsys.decoding import (
    DecodeTimings,
    constrained_beam_search,
    hf_constrained_beam_search,
)
from rere_pipeline.recsys.prompts import PromptTemplate
from rere_pipeline.recsys.recommend import CatalogueRecommender

log = logging.getLogger("benchmark")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="data/06_models/sft")
    parser.add_argument("--catalogue", default="data/03_primary/catalogue.parquet")
    parser.add_argument("--rows", default="data/05_model_input/test.parquet")
    parser.add_argument("--n", type=int, default=64, help="prompts to decode")
    parser.add_argument("--beams", type=int, default=20)
    parser.add_argument("--hf-batch", type=int, default=8, help="prompts per generate() call")
    parser.add_argument(
        "--our-batch", type=int, nargs="+", default=[32], help="prompts per batch in ours"
    )
    parser.add_argument("--skip-hf", action="store_true", help="time ours only")
    parser.add_argument("--repeats", type=int, default=1, help="timings per batch size (min)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--profile", action="store_true", help="then torch.profiler's top ops of one run of ours"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)

    backbone = load_backbone(args.model, device=args.device)
    catalogue = pd.read_parquet(args.catalogue)
    rows = pd.read_parquet(args.rows).iloc[: args.n]
    rec = CatalogueRecommender(
        backbone.tokenizer, backbone.model, catalogue, PromptTemplate(), num_beams=args.beams
    )
    prompts = rec.prompt_ids([list(h) for h in rows["history_item_title"]])
    trie = rec.trie.to(args.device)
    log.info(
        "%d prompts (mean %.1f tokens), beam width %d, device %s, %d threads",
        len(prompts),
        sum(map(len, prompts)) / len(prompts),
        args.beams,
        args.device,
        args.threads,
    )

    def timed(decode, batch_size: int, timings: DecodeTimings | None = None):
        kwargs = {"batch_size": batch_size, "pad_token_id": backbone.tokenizer.pad_token_id}
        if timings is not None:
            kwargs["timings"] = timings
        start = time.perf_counter()
        groups = decode(backbone.model, prompts, trie, args.beams, **kwargs)
        return groups, time.perf_counter() - start

    n = len(prompts)

    def same(a, b) -> int:
        """Prompts whose groups hold the same items in the same order."""
        return sum(x.items == y.items for x, y in zip(a, b, strict=True))

    header = f"{'decoder':<44}{'users/s':>10}{'s/user':>10}"
    if args.skip_hf:
        hf = hf_s = None
    else:
        hf, hf_s = timed(hf_constrained_beam_search, args.hf_batch)
        ours, ours_s = timed(constrained_beam_search, args.hf_batch)
        print(header + f"{'vs HF':>8}")
        for name, seconds in (
            (f"HF generate + TrieLogitsProcessor (batch {args.hf_batch})", hf_s),
            (f"ours (batch {args.hf_batch})", ours_s),
        ):
            print(f"{name:<44}{n / seconds:>10.2f}{seconds / n:>10.3f}{hf_s / seconds:>7.2f}x")
        print(f"same groups as HF: {same(hf, ours)}/{n} (batch {args.hf_batch})")

    first_s, first_groups = None, None
    print(
        header
        + f"{'vs batch ' + str(args.our_batch[0]):>14}"
        + ("" if hf_s is None else f"{'vs HF':>8}")
    )
    for batch in args.our_batch:
        runs = []
        for _ in range(args.repeats):
            timings = DecodeTimings()
            groups, seconds = timed(constrained_beam_search, batch, timings)
            runs.append((seconds, timings))
        seconds, timings = min(runs, key=lambda run: run[0])
        first_s = first_s or seconds
        first_groups = first_groups or groups
        print(
            f"{'ours (batch ' + str(batch) + ')':<44}{n / seconds:>10.2f}{seconds / n:>10.3f}"
            f"{first_s / seconds:>13.2f}x" + ("" if hf_s is None else f"{hf_s / seconds:>7.2f}x")
        )
        total = sum(timings.seconds.values())
        print(
            "  time share: "
            + ", ".join(f"{k} {v / total:.1%}" for k, v in sorted(timings.seconds.items()))
        )
        line = f"  same groups as batch {args.our_batch[0]}: {same(first_groups, groups)}/{n}"
        if hf is not None:
            line += f", as HF: {same(hf, groups)}/{n}"
        print(line)

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            timed(constrained_beam_search, args.our_batch[0])
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
