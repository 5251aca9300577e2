"""One SFT training step: TRL's fused LM head vs the plain completion-only head.

Same model, same batch (``--batch`` rows of ``--length`` tokens, the last ``--completion``
of them labelled), same optimiser. Prints seconds per step of each and the ratio.

    python benchmarks/sft_step.py --model data/06_models/backbone
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import trl.trainer.utils as trl_utils

from rere_pipeline.recsys.backbone import load_backbone


def fused_loss(model, ids, mask, labels):
    out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    return -out.log_probs.sum() / (labels != -100).sum()


def plain_loss(model, ids, mask, labels):
    hidden = model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    shifted = labels[:, 1:]
    keep = shifted != -100
    logits = model.get_output_embeddings()(hidden[:, :-1][keep]).float()
    return torch.nn.functional.cross_entropy(logits, shifted[keep])


def seconds_per_step(model, loss_fn, ids, mask, labels, steps: int) -> float:
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        loss_fn(model, ids, mask, labels).backward()
        optimiser.step()
        optimiser.zero_grad()

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def parser(doc: str) -> argparse.ArgumentParser:
    """The options both step benchmarks share: model, timed steps, threads."""
    out = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    out.add_argument("--model", default="data/06_models/backbone")
    out.add_argument("--steps", type=int, default=5)
    out.add_argument("--threads", type=int, default=2)
    return out


def training_model(args: argparse.Namespace) -> torch.nn.Module:
    """The model in train mode, with the thread count and seed fixed."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    return load_backbone(args.model).model.train()


def print_ratio(head: str, fused: float, plain: float) -> None:
    print(f"{head:<28}{'s/step':>10}{'vs fused':>10}")
    print(f"{'TRL fused (torch fallback)':<28}{fused:>10.3f}{1.0:>9.2f}x")
    print(f"{'plain, completion only':<28}{plain:>10.3f}{fused / plain:>9.2f}x")


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--batch", type=int, default=32)
    options.add_argument("--length", type=int, default=135)
    options.add_argument("--completion", type=int, default=25)
    args = options.parse_args()
    base = training_model(args)
    vocab = base.config.vocab_size
    ids = torch.randint(0, vocab, (args.batch, args.length))
    labels = ids.clone()
    labels[:, : args.length - args.completion] = -100
    mask = torch.ones_like(ids)

    fused_model = copy.deepcopy(base)
    trl_utils.add_fused_lm_head(fused_model)
    fused = seconds_per_step(fused_model, fused_loss, ids, mask, labels, args.steps)
    plain = seconds_per_step(copy.deepcopy(base), plain_loss, ids, mask, labels, args.steps)
    print(
        f"batch {args.batch} x {args.length} tokens ({args.completion} labelled), vocab {vocab}, {args.threads} threads"
    )
    print_ratio("loss head", fused, plain)


if __name__ == "__main__":
    main()
