"""``python -m components.workflow ingest|recluster|retrain``: a whole workflow in one process.

The same step functions the Airflow DAGs call, one after another (for DVC stages,
scripts and the benchmark). Prints the result as JSON; a batch that fails its
validation exits 3 with the message, other workflow errors exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = argparse.ArgumentParser(prog="python -m components.workflow", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="workflow", required=True)
    p = sub.add_parser("ingest", help="face_ingest: one batch into the identity store")
    p.add_argument("--batch", required=True, help="folder or s3://bucket/prefix")
    p.add_argument("--batch-id", help="default: a hash of the source and its file list")
    p.add_argument("--shard-size", type=int, help="default: workflow.shard_size")
    p.add_argument("--folder-labels", action="store_true", help="folder names are people (scores clustering)")
    p.add_argument("--at", help="ISO time recorded in the store's life-cycle log (default: now)")
    p.add_argument("--out", help="also write the batch metrics JSON here (e.g. for `dvc metrics show`)")
    p = sub.add_parser("recluster", help="face_recluster: re-cluster the unknown pool, log metrics and t-SNE")
    p.add_argument("--at", help="ISO time of this re-clustering (keys the outputs; default: now)")
    p.add_argument("--force", action="store_true", help="even when window T has not passed")
    p.add_argument("--out", help="also write the report JSON here")
    p = sub.add_parser("retrain", help="face_retrain: one self-labelled retraining cycle")
    p.add_argument("--key", required=True, help="identifies this request (a re-run with the same key does nothing)")
    p.add_argument("--labels-from", choices=["store", "lfw"], default="store")
    p.add_argument("--limit-people", type=int)
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override a retrain: parameter")
    p.add_argument("--out", help="also write the outcome JSON here")
    args = parser.parse_args(argv)

    from components.workflow import BatchRejected, WorkflowError
    from components.workflow import workspace as ws

    try:
        if args.workflow == "ingest":
            from components.workflow.ingest import run_ingest

            result = run_ingest(args.batch, batch_id=args.batch_id, shard_size=args.shard_size,
                                folder_labels=args.folder_labels, at=args.at)
        elif args.workflow == "recluster":
            from components.workflow.recluster import recluster

            result = ws.read_json(recluster(at=args.at, force=args.force))
        else:
            from components.workflow.retrain import reload_serving, retrain

            overrides = dict(item.split("=", 1) for item in args.set)
            uri = retrain(args.key, overrides=overrides, labels_from=args.labels_from, limit_people=args.limit_people)
            result = {**ws.read_json(uri), "serving": reload_serving(uri)}
    except BatchRejected as error:
        print(str(error), file=sys.stderr)
        return 3
    except WorkflowError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2, default=str)
    if args.out:
        tmp = f"{args.out}.tmp"
        with open(tmp, "w") as file:
            file.write(text)
        os.replace(tmp, args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
