"""
### face_reembed: move the identity store to a newly promoted champion

Scheduled by the asset `faces://champion`, which `face_retrain` updates when its
challenger was promoted; trigger it by hand after promoting a version yourself
(`faces models promote`, or the `champion` alias moved in the MLflow UI). With the
store already on the champion it does nothing.

`reembed` re-embeds every stored face crop with the champion in batches (resumes after
a kill from the batches already staged), recomputes every identity's medoid, reports
identities that no longer cohere under the new model, and only then switches the
store's active model (one transaction): until then ingest, re-clustering and serving
keep using the old model. `reload_serving` then tells the BentoML service at
`FACES_SERVING_URL` to follow the store. Steps: `components/workflow/reembed.py`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Asset, Param, dag, task

CHAMPION = Asset("faces://champion")


@dag(
    dag_id="face_reembed",
    schedule=[CHAMPION],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["faces", "models"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
    params={"batch_size": Param(256, type="integer", minimum=1, maximum=4096, title="Faces per batch",
                                description="Faces re-embedded and staged per transaction.")},
)
def face_reembed():
    @task(execution_timeout=timedelta(hours=6))
    def reembed(params=None) -> str:
        from components.workflow import reembed as step
        from components.workflow.steps import run_step

        return run_step(step.reembed_store, batch_size=params["batch_size"])

    @task
    def reload_serving(report: str) -> dict:
        from components.workflow import reembed as step
        from components.workflow.retrain import reload_serving as reload
        from components.workflow.steps import run_step

        if not step.store_changed(report):
            return {"reloaded": False, "reason": "the store already used the champion"}
        return run_step(reload, report, force=True)

    reload_serving(reembed())


face_reembed()
