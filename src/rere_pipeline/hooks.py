"""Project hooks."""

from __future__ import annotations

import logging

from kedro.framework.hooks import hook_impl

log = logging.getLogger(__name__)


class RuntimeHook:
    """Sets torch's thread count from ``params:runtime.torch_threads`` before anything runs.

    Two processes that each use every core stall each other badly on a small machine; the
    parameter makes the choice explicit (``null``: leave torch's default).
    """

    @hook_impl
    def after_context_created(self, context) -> None:
        threads = (context.params.get("runtime") or {}).get("torch_threads")
        if threads:
            import torch  # here, not at import: `kedro` commands that run nothing stay fast

            torch.set_num_threads(int(threads))
            log.info("torch uses %d thread(s)", torch.get_num_threads())
