"""Project hooks."""

from __future__ import annotations

import logging
import signal
import threading

from kedro.framework.hooks import hook_impl

from rere_pipeline.interrupts import RunInterrupted

log = logging.getLogger(__name__)


class InterruptHook:
    """Turns the first Ctrl-C (SIGINT) or SIGTERM of a ``kedro run`` into an error.

    A bare ``KeyboardInterrupt`` bypasses Kedro's failure path: MLflow's exit handler then
    closes the running stage as FINISHED and leaves the parent run RUNNING, and a SIGTERM (a
    scheduler cancelling the task, ``kill``) leaves both RUNNING. As an error it fails like any
    node: kedro-mlflow and ``StageRunsHook`` mark the run and the running stage FAILED, and
    Kedro prints the ``--from-nodes`` argument that resumes the run. Should a library's
    ``except Exception`` swallow it, the run still stops before or after the current node. A
    second signal acts as usual, at once. A signal with a handler of its own (Airflow's
    SIGTERM) or ignored by the parent process (SIGINT of a background job) is left alone.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self._previous: dict[int, object] = {}
        self._received: str | None = None

    @hook_impl
    def before_pipeline_run(self) -> None:
        self._received = None
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers (and receives the signals)
        for number in self.SIGNALS:
            handler = signal.getsignal(number)
            if handler in (signal.default_int_handler, signal.SIG_DFL):
                self._previous[number] = handler
                signal.signal(number, self._interrupt)

    def _interrupt(self, number: int, frame) -> None:
        self.restore()
        self._received = signal.Signals(number).name
        log.error("%s received: stopping the run (send it again to stop at once)", self._received)
        self._stop_if_received()

    def _stop_if_received(self) -> None:
        if self._received is not None:
            raise RunInterrupted(f"stopped by {self._received}")

    @hook_impl
    def before_node_run(self) -> None:
        self._stop_if_received()

    @hook_impl
    def after_node_run(self) -> None:
        self._stop_if_received()

    # first among the hooks, so that no other one (kedro-mlflow's) runs with the handlers set
    @hook_impl(tryfirst=True)
    def after_pipeline_run(self) -> None:
        self.restore()

    @hook_impl(tryfirst=True)
    def on_pipeline_error(self) -> None:
        self.restore()

    def restore(self) -> None:
        """Put back the handlers this hook replaced (not one set by someone else since)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for number, handler in self._previous.items():
            if signal.getsignal(number) == self._interrupt:
                signal.signal(number, handler)
        self._previous = {}


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


class ParameterCheckHook:
    """Refuses parameters that cannot mean what they say before anything runs, instead of
    after an hour of training (each node checks its own again). The valid samples' sizes are
    checked against the valid split when the first node that takes it loads it."""

    VALID_SPLIT = ("valid", "prompts_valid")  # datasets holding every valid row

    def __init__(self) -> None:
        self._params: dict = {}
        self._split_checked = False

    @hook_impl
    def after_context_created(self, context) -> None:
        from rere_pipeline.pipelines.samples import check_samples_apart
        from rere_pipeline.recsys.metrics import check_ranking_depth

        self._params, self._split_checked = context.params, False
        check_ranking_depth(self._params)
        check_samples_apart(self._params)

    @hook_impl
    def before_node_run(self, node, inputs) -> None:
        from rere_pipeline.pipelines.samples import check_samples_fit

        if self._split_checked:
            return
        split = next((inputs[name] for name in self.VALID_SPLIT if name in inputs), None)
        if split is not None:
            self._split_checked = True
            check_samples_fit(self._params, len(split))


class StageRunsHook:
    """One nested MLflow run per pipeline stage inside kedro-mlflow's run of the whole ``kedro run``.

    A node's stage is its pipeline tag (``data``, ``sft``, ``rere`` ...). Before a node runs, its
    stage's child run becomes the active run (created on first use, resumed after), so the
    metrics and artifacts its outputs log land there; once the node's last output is saved the
    child is closed again and the parent is active, as kedro-mlflow expects. Each closed child's
    latest metric values are copied to the parent, so the parent alone answers "how did this run
    do". A failing node's child is closed here as FAILED, before kedro-mlflow's error hook
    runs, so the parent is active again for that hook, which marks it FAILED too; a parent
    opened before ``kedro run`` (an orchestrator's), which kedro-mlflow leaves open, gets back
    the active run it had. A node whose input fails to load never starts (no node hook runs),
    so that error marks the stage's run FAILED here, when an earlier node of the stage had
    opened one.
    So does any failure for a stage closed between its nodes with some of them never run (the
    ``evaluate`` stage spans ``rere``: stopped in ``rere``, it has scored SFT only).
    """

    def __init__(self, stages: tuple[str, ...] | None = None):
        self.stages = stages
        self._children: dict[str, str] = {}
        self._copied: dict[str, dict[str, float]] = {}  # per stage run: values copied up
        self._pending: set[str] = set()
        self._stage: str | None = None
        self._loading: str | None = None  # the stage of the node whose inputs are loading
        self._node: str | None = None  # the running node
        self._unfinished: dict[str, set[str]] = {}  # per stage: its nodes not run yet

    def _stage_of(self, node) -> str | None:
        from rere_pipeline.pipeline_registry import ON_DEMAND, STAGES

        known = self.stages or (*STAGES, *ON_DEMAND)
        return next((t for t in known if t in node.tags), None)

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        self._children, self._copied, self._pending, self._stage = {}, {}, set(), None
        self._loading = self._node = None
        self._unfinished = {}
        for node in pipeline.nodes if pipeline is not None else ():
            stage = self._stage_of(node)
            if stage is not None:
                self._unfinished.setdefault(stage, set()).add(node.name)

    @hook_impl
    def before_dataset_loaded(self, dataset_name, node) -> None:
        # the stage's run is not made active here: kedro-mlflow logs the node's parameters to
        # the parent in its own ``before_node_run``
        self._loading = self._stage_of(node)

    # before kedro-mlflow's (which closes every active run, or warns about the active one when
    # the parent was opened before `kedro run`): the stage is closed first, the parent is left
    @hook_impl(tryfirst=True)
    def on_pipeline_error(self, error, run_params, pipeline, catalog) -> None:
        try:
            self._fail_stages()
        except Exception:  # kedro-mlflow's clean-up still runs, and the run's own error shows
            log.exception("could not mark the stages' MLflow runs failed")

    def _fail_stages(self) -> None:
        import mlflow

        client = mlflow.MlflowClient()
        run_id = self._children.get(self._loading) if self._loading else None
        if run_id is not None:
            client.set_terminated(run_id, status="FAILED")
        for stage, run_id in self._children.items():
            # a stage closed between its nodes (the running one is still active)
            if self._unfinished.get(stage) and client.get_run(run_id).info.status == "FINISHED":
                client.set_terminated(run_id, status="FAILED")
        active = mlflow.active_run()
        if self._stage is not None and active is not None:
            if active.info.run_id == self._children.get(self._stage):
                mlflow.end_run(status="FAILED")  # the running stage's: its parent is active again
            self._stage = None

    @hook_impl
    def before_node_run(self, node, catalog, inputs, is_async) -> None:
        import mlflow

        self._loading = None

        parent = mlflow.active_run()
        stage = self._stage_of(node)
        if parent is None or stage is None:
            return
        if stage in self._children:
            mlflow.start_run(run_id=self._children[stage], nested=True)
        else:
            child = mlflow.start_run(run_name=stage, nested=True, tags={"stage": stage})
            self._children[stage] = child.info.run_id
        self._stage, self._node = stage, node.name
        self._pending = set(node.outputs)
        if not self._pending:
            self._close()

    @hook_impl
    def after_dataset_saved(self, dataset_name, data, node) -> None:
        if self._stage is None:
            return
        self._pending.discard(dataset_name)
        if not self._pending:
            self._close()

    def _close(self) -> None:
        import mlflow

        self._unfinished.get(self._stage, set()).discard(self._node)
        child = mlflow.active_run()
        mlflow.end_run()
        parent = mlflow.active_run()
        if parent is not None and child is not None:
            latest = mlflow.MlflowClient().get_run(child.info.run_id).data.metrics
            # what this stage logged since it last closed: a stage closed again must not put
            # back a value another stage has replaced in the parent since
            copied = self._copied.setdefault(child.info.run_id, {})
            fresh = {k: v for k, v in latest.items() if copied.get(k) != v}
            if fresh:
                mlflow.log_metrics(fresh)
                copied.update(fresh)
        self._stage = None
