"""
### face_ingest: one batch of photos into the identity store

Trigger with the batch as a parameter: a folder the workers can read, or an
`s3://bucket/prefix` (endpoint and keys from `S3_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`).

`plan` lists and shards the batch -> `validate_images` (Great Expectations: decodable,
dimensions, formats, duplicate hashes) -> per shard, mapped over workers:
`detect` (MTCNN, align, quality gates) -> `validate_faces` -> `embed` (with its
embeddings suite) -> `assign` (store photos, faces and crops; assign each new face to
an identity or the unknown pool) -> `record_metrics` (MLflow experiment `face_ingest`).

A failed expectation fails the run at once (no retries) with the rows and reasons,
and the batch is quarantined; nothing is deleted. Outputs are keyed by the batch id
(the `batch_id` parameter, or a hash of the batch's file list) under
`$FACES_WORK_URI/batches/<batch id>/`; clearing and re-running any task adds nothing
twice. Steps: `components/workflow/ingest.py`, run in the machine's warm step server
(`components/workflow/warm.py`: TensorFlow and the models stay loaded between tasks).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, task


@dag(
    dag_id="face_ingest",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    doc_md=__doc__,
    tags=["faces", "ingest"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=20)},
    max_active_runs=4,
    params={
        "batch": Param(type="string", minLength=1, title="Batch",
                       description="Folder or s3://bucket/prefix holding the photos (searched recursively)."),
        "batch_id": Param("", type="string", title="Batch id",
                          description="Empty: a hash of the batch's source and file list."),
        "shard_size": Param(None, type=["null", "integer"], minimum=1, title="Photos per shard",
                            description="Empty: workflow.shard_size in params.yaml."),
        "folder_labels": Param(False, type="boolean", title="Folder names are people",
                               description="Score clustering against folder names (LFW-style batches)."),
    },
)
def face_ingest():
    @task
    def plan(params=None) -> str:
        from components.workflow.steps import run_ingest_step

        return run_ingest_step("plan", params["batch"], batch_id=params["batch_id"] or None,
                        shard_size=params["shard_size"], folder_labels=params["folder_labels"])

    @task
    def validate_images(manifest: str) -> list[str]:
        from components.workflow.steps import run_ingest_step

        return run_ingest_step("validate_images", manifest)

    @task
    def detect(shard: str) -> str:
        from components.workflow.steps import run_ingest_step

        return run_ingest_step("detect", shard)

    @task
    def validate_faces(detections: str) -> str:
        from components.workflow.steps import run_ingest_step

        return run_ingest_step("validate_faces", detections)

    @task
    def embed(detections: str) -> str:
        from components.workflow.steps import run_ingest_step

        return run_ingest_step("embed", detections)

    @task
    def assign(embeddings: list[str], dag_run=None) -> str:
        from components.workflow.steps import run_ingest_step

        # The run's own time, not the wall clock: a cleared and re-run task records the same moment.
        return run_ingest_step("assign", list(embeddings), at=(dag_run.logical_date or dag_run.run_after).isoformat())

    @task
    def record_metrics(assigned: str) -> str:
        from components.workflow.steps import run_ingest_step

        return run_ingest_step("record_metrics", assigned)

    shards = validate_images(plan())
    detections = validate_faces.expand(detections=detect.expand(shard=shards))
    record_metrics(assign(embed.expand(detections=detections)))


face_ingest()
