"""
### face_retrain: one self-labelled retraining cycle, promoted only when it wins

Triggered from the UI (**Trigger** shows the parameters below; empty fields keep
params.yaml's `retrain:` values) or by the asset `faces://identities`, which
`face_recluster` updates when identities were created or grew.

`retrain`: self-labels from the identity store -> hold out each identity's newest faces
and whole identities as evidence -> re-fit the champion's projection head on the rest ->
compare champion and challenger on the evidence -> register the challenger (alias
`challenger`, keyed by this run) -> promote it to `champion` only when it beats the
champion by `promote_margin` on `promote_metric`. Everything is logged to MLflow
(experiment `retrain`: both models side by side). When the champion changed, `announce`
updates the asset `faces://champion`, which schedules `face_reembed`: the identity store
moves to the new model, then serving follows it. A cleared, retried or killed-and-rerun
task registers no second version. Steps: `components/workflow/retrain.py`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Asset, Param, dag, task

IDENTITIES = Asset("faces://identities")
# The trigger form's choices, as the code that checks them names them (no second list to keep in step).
METRICS = ("accuracy", "auc", "tar_at_far_1e-3", "pairwise_f1", "bcubed_f1")  # components.train.retrain.METRICS
EVIDENCE = ("future", "unseen", "all")  # components.train.retrain.EVIDENCE
HEAD_LOSSES = ("cosface", "arcface")  # components.train.head.HEAD_LOSSES
OVERRIDES = ("steps", "learning_rate", "loss", "anchor", "min_faces", "cohesion_slack", "future_share", "unseen_share",
             "promote_metric", "promote_on", "promote_margin", "guard_margin", "max_p_value")
CHAMPION = Asset("faces://champion")


def _optional(kind: str, title: str, description: str, **limits) -> Param:
    return Param(None, type=["null", kind], title=title, description=description, **limits)


@dag(
    dag_id="face_retrain",
    schedule=[IDENTITIES],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["faces", "training"],
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1)},
    params={
        "labels_from": Param("store", enum=["store", "lfw"], title="Self-labels from",
                             description="store: the identity store's identities; lfw: the LFW stream (a benchmark)."),
        "limit_people": _optional("integer", "LFW subset", "labels_from=lfw only: people in the stream; empty: all.",
                                  minimum=4),
        "steps": _optional("integer", "Training steps", "Empty: retrain.steps.", minimum=1),
        "learning_rate": _optional("number", "Learning rate", "Empty: retrain.learning_rate.", exclusiveMinimum=0),
        "loss": _optional("string", "Loss", "Empty: retrain.loss.", enum=[None, *HEAD_LOSSES]),
        "anchor": _optional("number", "Pull towards the champion's head", "Empty: retrain.anchor.", minimum=0),
        "min_faces": _optional("integer", "Faces per self-labelled identity", "Empty: retrain.min_faces.", minimum=3),
        "cohesion_slack": _optional("number", "Cohesion slack of a self-labelled identity",
                                    "Empty: retrain.cohesion_slack.", minimum=0, maximum=2),
        "future_share": _optional("number", "Newest faces held out", "Empty: retrain.future_share.",
                                  exclusiveMinimum=0, exclusiveMaximum=1),
        "unseen_share": _optional("number", "Identities held out whole", "Empty: retrain.unseen_share.",
                                  exclusiveMinimum=0, exclusiveMaximum=1),
        "promote_metric": _optional("string", "Promotion metric", "Empty: retrain.promote_metric.",
                                    enum=[None, *METRICS]),
        "promote_on": _optional("string", "Evidence that decides", "future: newest photos of known people; unseen: "
                                "people never trained on; all: both. Empty: retrain.promote_on.",
                                enum=[None, *EVIDENCE]),
        "promote_margin": _optional("number", "Promotion margin", "Empty: retrain.promote_margin."),
        "guard_margin": _optional("number", "Largest fall allowed on the other figures", "Empty: retrain.guard_margin.",
                                  minimum=0),
        "max_p_value": _optional("number", "Significance of the win (McNemar p below)", "Empty: retrain.max_p_value.",
                                 exclusiveMinimum=0, maximum=1),
    },
)
def face_retrain():
    @task(execution_timeout=timedelta(hours=6))
    def retrain(params=None, dag_run=None) -> str:
        from components.workflow import retrain as step
        from components.workflow.steps import run_step

        overrides = {key: params[key] for key in OVERRIDES}
        # Keyed by the run's time (stable when the run is cleared; the run id is not, under `dags test`).
        key = f"retrain-{(dag_run.logical_date or dag_run.run_after).isoformat()}"
        return run_step(step.retrain, key, overrides=overrides, labels_from=params["labels_from"],
                        limit_people=params["limit_people"])

    @task(outlets=[CHAMPION])
    def announce(outcome: str) -> str:
        from airflow.sdk.exceptions import AirflowSkipException

        from components.workflow import retrain as step
        from components.workflow import workspace as ws

        if not step.champion_changed(ws.read_json(outcome)):
            raise AirflowSkipException("the champion did not change: nothing to re-embed")
        return outcome

    announce(retrain())


face_retrain()
