"""Calling a workflow step from an orchestrator task.

A :class:`~components.workflow.WorkflowError` (a batch that fails validation, an
empty folder, a bad parameter) will fail again however often it is retried, so it
becomes Airflow's ``AirflowFailException``: the task fails at once, with the step's
message, instead of using up its retries. Anything else (a database or S3 hiccup, a
killed worker) propagates unchanged and is retried.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from components.workflow import WorkflowError


def run_step(step: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``step(*args, **kwargs)``; a WorkflowError fails the Airflow task without retries."""
    try:
        return step(*args, **kwargs)
    except WorkflowError as error:
        from airflow.sdk.exceptions import AirflowFailException  # only ever called inside an Airflow task

        raise AirflowFailException(str(error)) from error


def run_ingest_step(name: str, *args: Any, **kwargs: Any) -> Any:
    """Run face_ingest's step ``name`` in this machine's warm step server (components.workflow.warm).

    The task's process imports neither TensorFlow nor the models: the server has them
    loaded from earlier tasks. ``FACES_WARM_WORKERS=0`` runs the step in the task's process.
    """
    from components.workflow import warm

    return run_step(warm.call, name, *args, **kwargs)
