"""One RL (GRPO) policy-gradient step: TRL's fused LM head vs the plain head ReRe uses on CPU.

The expensive part of a ReRe step besides decoding is the policy's per-token log-probabilities
of G completions per prompt (forward + backward). Same model, same batch (``--batch``
completions of ``--completion`` tokens after a ``--prompt``-token prompt), same optimiser;
prints seconds per step of each and the ratio, and checks both give the same log-probabilities.

    python benchmarks/rl_step.py --model data/06_models/sft
"""

from __future__ import annotations

import copy

import torch
import trl.trainer.utils as trl_utils

from rere_pipeline.recsys.rere import plain_head_logps
from sft_step import parser, print_ratio, seconds_per_step, training_model  # same directory


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--batch", type=int, default=64, help="completions: prompts x G")
    options.add_argument("--prompt", type=int, default=101)
    options.add_argument("--completion", type=int, default=28)
    args = options.parse_args()
    base = training_model(args)
    vocab = base.config.vocab_size
    length, keep = args.prompt + args.completion, args.completion
    ids = torch.randint(0, vocab, (args.batch, length))
    mask = torch.ones_like(ids)

    def fused_logps(model, ids, mask, _):
        labels = ids.clone()
        labels[:, :-keep] = -100
        out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
        return out.log_probs[:, -keep:], out.entropy[:, -keep:]

    def plain_logps(model, ids, mask, _):
        logps, entropy, _ = plain_head_logps(model, ids, mask, keep, len(ids), 1.0, True)
        return logps, entropy

    fused_model = copy.deepcopy(base)
    trl_utils.add_fused_lm_head(fused_model, outputs=("log_probs", "entropy"))
    plain_model = copy.deepcopy(base)
    with torch.no_grad():
        same = torch.allclose(
            fused_logps(fused_model, ids, mask, None)[0],
            plain_logps(plain_model, ids, mask, None)[0],
            atol=1e-4,
        )

    def loss(fn):
        return lambda model, ids, mask, labels: -fn(model, ids, mask, labels)[0].mean()

    fused = seconds_per_step(fused_model, loss(fused_logps), ids, mask, None, args.steps)
    plain = seconds_per_step(plain_model, loss(plain_logps), ids, mask, None, args.steps)
    print(
        f"{args.batch} completions x ({args.prompt} prompt + {args.completion} completion) tokens, "
        f"vocab {vocab}, {args.threads} threads; same log-probabilities: {same}"
    )
    print_ratio("LM head", fused, plain)


if __name__ == "__main__":
    main()
