"""
### face_retrain: one self-labelled retraining cycle, promoted only when it wins

Triggered from the UI (**Trigger** shows the parameters below; empty fields keep
params.yaml's `retrain:` values) or by the asset `faces://identities`, which
`face_recluster` updates when identities were created or grew.

`retrain`: self-label (identities of the identity store, or the LFW stream) ->
fine-tune the champion -> evaluate champion and challenger on held-out LFW people ->
register the challenger (alias `challenger`) -> promote it to `champion` only when it
beats the champion by `promote_margin` on `promote_metric`, else keep. Everything is
logged to MLflow (experiment `retrain`: both models side by side). When the champion
changed, `announce` updates the asset `faces://champion`, which schedules
`face_reembed`: the identity store moves to the new model, then serving follows it. The outcome is keyed by the DAG run: a cleared and re-run task registers no
second model version. Steps: `components/workflow/retrain.py`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Asset, Param, dag, task

IDENTITIES = Asset("faces://identities")
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
                             description="store: the identity store's identities; lfw: the LFW stream."),
        "limit_people": _optional("integer", "LFW subset", "People per LFW split (quick checks); empty: all.",
                                  minimum=2),
        "epochs": _optional("integer", "Epochs", "Empty: retrain.epochs.", minimum=1),
        "steps_per_epoch": _optional("integer", "Steps per epoch", "Empty: retrain.steps_per_epoch.", minimum=1),
        "learning_rate": _optional("number", "Learning rate", "Empty: retrain.learning_rate.", exclusiveMinimum=0),
        "loss": _optional("string", "Loss", "Empty: retrain.loss.",
                          enum=[None, "triplet", "arcface", "cosface", "center", "softmax", "quadruplet"]),
        "train_from": _optional("string", "Fine-tune from block", "Empty: retrain.train_from."),
        "min_faces": _optional("integer", "Faces per self-labelled identity", "Empty: retrain.min_faces.", minimum=2),
        "identities_per_batch": _optional("integer", "Identities per batch (P)", "Empty: retrain.identities_per_batch.",
                                          minimum=2),
        "faces_per_identity": _optional("integer", "Faces per identity in a batch (K)",
                                        "Empty: retrain.faces_per_identity.", minimum=2),
        "promote_metric": _optional("string", "Promotion metric", "Empty: retrain.promote_metric.",
                                    enum=[None, "accuracy", "auc", "tar_at_far_1e-3", "pairwise_f1", "bcubed_f1"]),
        "promote_margin": _optional("number", "Promotion margin", "Empty: retrain.promote_margin."),
    },
)
def face_retrain():
    @task(execution_timeout=timedelta(hours=6))
    def retrain(params=None, dag_run=None) -> str:
        from components.workflow import retrain as step
        from components.workflow.steps import run_step

        overrides = {key: params[key] for key in ("epochs", "steps_per_epoch", "learning_rate", "loss", "train_from",
                                                  "min_faces", "identities_per_batch", "faces_per_identity",
                                                  "promote_metric", "promote_margin")}
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
