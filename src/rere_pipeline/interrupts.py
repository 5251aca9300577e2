"""The error an interrupted ``kedro run`` raises (its own module: datasets and the retrain
cycle re-raise it without importing the hooks)."""


class RunInterrupted(Exception):
    """A ``kedro run`` stopped by Ctrl-C (SIGINT) or SIGTERM (see ``hooks.InterruptHook``)."""
