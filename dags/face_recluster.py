"""
### face_recluster: re-cluster the unknown pool every window T

Runs every `identities.recluster_every_s` seconds (params.yaml; window T, hourly by
default). `recluster` clusters the unknown pool with Chinese Whispers, joins clusters
to identities whose medoid matches or makes new identities, recomputes medoids, then
logs the store's clustering metrics and a t-SNE map of the faces to MLflow (experiment
`face_recluster`). The run's time keys everything, so a cleared and re-run task finds
the pool already re-clustered at that time and changes nothing. `force` re-clusters
even when no window has passed.

When identities were created or grew, `announce` updates the asset
`faces://identities`, which schedules `face_retrain`. Steps:
`components/workflow/recluster.py`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Asset, Param, dag, task

IDENTITIES = Asset("faces://identities")


def _window() -> timedelta:
    # params.yaml is plain YAML (no heavy import); T is a deployment parameter, not code.
    from components.settings import load_settings

    return timedelta(seconds=load_settings().identities.recluster_every_s)


@dag(
    dag_id="face_recluster",
    schedule=_window(),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["faces", "identities"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=20)},
    params={"force": Param(False, type="boolean", title="Re-cluster now",
                           description="Re-cluster the pool even if window T has not passed.")},
)
def face_recluster():
    @task
    def recluster(params=None, dag_run=None) -> str:
        from components.workflow import recluster as step
        from components.workflow.steps import run_step

        # The scheduled moment (window T's end), not the wall clock: it keys this re-clustering.
        at = dag_run.logical_date or dag_run.run_after
        return run_step(step.recluster, at=at.isoformat(), force=params["force"])

    @task(outlets=[IDENTITIES])
    def announce(report: str) -> str:
        from airflow.sdk.exceptions import AirflowSkipException

        from components.workflow import recluster as step

        if not step.identities_changed(report):
            raise AirflowSkipException("no identity was created or grew: nothing new to retrain on")
        return report

    announce(recluster())


face_recluster()
