"""One RL (GRPO) policy-gradient step: TRL's fused LM head vs the plain head ReRe uses on CPU,
with the whole rows and with each group's prompt run once.

The expensive part of a ReRe step besides decoding is the policy's per-token log-probabilities
of G completions per prompt (forward + backward). Same model, same batch (``--batch``
completions of ``--completion`` tokens after a ``--prompt``-token prompt, ``--group``
completions per prompt, rows shuffled as TRL hands them over), same optimiser; prints seconds
per step of each and the ratios, and checks all give the same log-probabilities.

    python benchmarks/rl_step.py --model data/06_models/sft
"""

from __future__ import annotations

import copy

import torch
import trl.trainer.utils as trl_utils

from rere_pipeline.recsys import rere
from sft_step import parser, seconds_per_step, training_model  # same directory


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--batch", type=int, default=64, help="completions: prompts x G")
    options.add_argument("--prompt", type=int, default=101)
    options.add_argument("--completion", type=int, default=28)
    options.add_argument("--group", type=int, default=16, help="G: completions per prompt")
    args = options.parse_args()
    base = training_model(args)
    vocab = base.config.vocab_size
    keep = args.completion
    prompts = torch.randint(0, vocab, (-(-args.batch // args.group), args.prompt))
    rows = torch.randperm(args.batch) // args.group
    ids = torch.cat([prompts[rows], torch.randint(0, vocab, (args.batch, keep))], dim=1)
    mask = torch.ones_like(ids)

    def fused_logps(model, ids, mask, _):
        labels = ids.clone()
        labels[:, :-keep] = -100
        out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
        return out.log_probs[:, -keep:], out.entropy[:, -keep:]

    def shared_logps(model, ids, mask, _):
        return rere.plain_head_logps(model, ids, mask, keep, len(ids), 1.0, True)[:2]

    def whole_logps(model, ids, mask, _):  # every row runs its prompt
        whole = model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        head = model.get_output_embeddings()
        return rere.head_logps(head, whole[:, -keep - 1 : -1], ids[:, -keep:], 1.0, True)

    fused_model = copy.deepcopy(base)
    trl_utils.add_fused_lm_head(fused_model, outputs=("log_probs", "entropy"))
    variants = {
        "TRL fused (torch fallback)": (fused_model, fused_logps),
        "plain, whole rows": (copy.deepcopy(base), whole_logps),
        "plain, shared prompts": (copy.deepcopy(base), shared_logps),
    }
    with torch.no_grad():
        logps = [fn(model, ids, mask, None)[0] for model, fn in variants.values()]
    same = all(torch.allclose(logps[0], other, atol=1e-4) for other in logps[1:])

    def loss(fn):
        return lambda model, ids, mask, labels: -fn(model, ids, mask, labels)[0].mean()

    seconds = {
        name: seconds_per_step(model, loss(fn), ids, mask, None, args.steps)
        for name, (model, fn) in variants.items()
    }
    print(
        f"{args.batch} completions x ({args.prompt} prompt + {keep} completion) tokens, "
        f"{len(prompts)} prompts, vocab {vocab}, {args.threads} threads; "
        f"same log-probabilities: {same}"
    )
    fused = seconds["TRL fused (torch fallback)"]
    print(f"{'log-probabilities':<28}{'s/step':>10}{'vs fused':>10}")
    for name, value in seconds.items():
        print(f"{name:<28}{value:>10.3f}{fused / value:>9.2f}x")


if __name__ == "__main__":
    main()
