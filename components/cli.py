"""``faces``: one command, one sub-command per step and per benchmark."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _quiet_tensorflow() -> None:
    # TensorFlow's C++ start-up chatter drowns the output users care about.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def cmd_setup_model(args, settings) -> int:
    from components.embed import convert

    path = convert(settings.base.models_dir / "cache", settings.model_path)
    print(f"embedder ready: {path}")
    return 0


def cmd_run(args, settings) -> int:
    from components.datasets.lfw import LFW_ROOT_DEFAULT, demo_subset
    from components.pipeline.run import Photo, folder_photos, run
    from components.settings import PROJECT_ROOT

    out_dir = Path(args.out) if args.out else settings.run.out_dir
    if args.input:
        root = Path(args.input).resolve()
        if not root.is_dir():
            print(f"error: --input {root} is not a folder", file=sys.stderr)
            return 2
        photos, unreadable = folder_photos(root, folder_labels=args.folder_labels)
        name = str(root)
    else:
        subset = demo_subset(
            PROJECT_ROOT / LFW_ROOT_DEFAULT,
            n_people=settings.run.demo_people,
            min_images=settings.run.demo_min_images,
            max_images_per_person=settings.run.demo_max_images,
        )
        photos = [Photo(path, person) for person, paths in subset.items() for path in paths]
        unreadable, name = [], f"LFW demo subset ({len(subset)} people, {len(photos)} photos)"
    from components.embed.thresholds import UncalibratedModelError
    from components.engine.reembed import ReembedError
    from components.identities.store import ModelMismatchError
    from components.track import TrackingError

    try:
        summary = run(photos, out_dir, settings, store_url=args.db, input_name=name, unreadable=unreadable,
                      progress=not args.no_progress, full_recluster=args.full_recluster)
    except (UncalibratedModelError, ModelMismatchError, ReembedError, TrackingError) as error:
        # Which model to embed with is unclear (or unreachable): stop before storing anything.
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(_headline(summary), indent=2))
    if summary.get("model", {}).get("reembedded", {}) and summary["model"]["reembedded"].get("changed"):
        print(f"the store was re-embedded with {summary['model']['model_version']} first", file=sys.stderr)
    print(f"report: {out_dir / 'report.html'}  (summary: {out_dir / 'report.json'})")
    return 0


def _headline(summary: dict) -> dict:
    clustering = summary.get("clustering") or {}
    scored = clustering.get("against_folder_labels") or {}
    return {
        "photos_new": summary["this_run"]["photos_new"],
        "photos_already_stored": summary["this_run"]["photos_already_stored"],
        "rejected_files": summary["this_run"]["n_rejected_files"],
        "faces": summary["store"]["faces"],
        "usable_faces": summary["store"]["usable_faces"],
        "identities": summary["identities"]["count"],
        "silhouette": clustering.get("silhouette"),
        "pairwise_f1": scored.get("pairwise_f1"),
        "bcubed_f1": scored.get("bcubed_f1"),
        "seconds": summary["seconds"],
    }


def cmd_verify(args, settings) -> int:
    from components.api import verify
    from components.images import BadImageError

    try:
        result = verify(args.photo_a, args.photo_b, threshold=args.threshold)
    except BadImageError as error:
        print(json.dumps({"error": error.reason, "code": error.code, "path": str(error.path)}))
        return 2
    print(json.dumps(result, indent=2))
    return 0 if result.get("same") is not None else 1


def cmd_bench_reembed(args, settings) -> int:
    from components.bench.reembed import run_benchmark

    result = run_benchmark(settings, out=Path(args.out), faces=args.faces, batch_size=args.batch_size,
                           progress=not args.no_progress)
    print(json.dumps({key: result[key] for key in ("faces", "plain_embed", "reembed", "projected_seconds_for_13k",
                                                   "goal_met")}, indent=2))
    print(f"written: {args.out}")
    return 0


def cmd_bench_lfw_verify(args, settings) -> int:
    from components.bench.lfw_verify import run_benchmark

    result = run_benchmark(settings, out=Path(args.out), with_dlib=not args.no_dlib, speed_photos=args.speed_photos,
                           repeats=args.repeats)
    print(json.dumps(result["table"], indent=2))
    print(f"written: {args.out}")
    return 0


def cmd_bench_candidates(args, settings) -> int:
    from components.bench.candidates import run_benchmark

    result = run_benchmark(settings, out=Path(args.out), progress=not args.no_progress,
                           command="faces bench candidates " + " ".join(sys.argv[3:]))
    print("\n".join(result["table"]))
    print(f"written to {args.out}")
    return 0


def cmd_bench_cluster_threshold(args, settings) -> int:
    from components.bench.cluster_threshold import run_benchmark

    result = run_benchmark(settings, out=Path(args.out))
    print(json.dumps({k: result[k] for k in ("chosen_threshold", "calibration_at_chosen", "held_out_at_chosen")}, indent=2))
    print(f"written: {args.out}")
    return 0


def cmd_bench_serve(args, settings) -> int:
    from components.bench.serve import main as bench_serve_main

    return bench_serve_main(args, settings)


def cmd_bench_soak(args, settings) -> int:
    from components.bench.soak import main as bench_soak_main

    return bench_soak_main(args, settings)


def cmd_bench_ingest(args, settings) -> int:
    from components.bench.ingest import run_benchmark, table

    result = run_benchmark(settings, out=Path(args.out), lfw_photos=args.lfw_photos, fullhd_photos=args.fullhd_photos,
                           shard_size=args.shard_size, dag=not args.no_dag, baseline=not args.no_baseline,
                           baseline_detect_mode=None if args.baseline_detect_mode == "none" else args.baseline_detect_mode,
                           direct_repeats=args.direct_repeats, command="faces bench ingest " + " ".join(sys.argv[3:]))
    print(json.dumps({"table": table(result), "thesis_load_estimate": result["thesis_load_estimate"]}, indent=2))
    print(f"written: {args.out}")
    return 0


def cmd_bench_ingest_stack(args, settings) -> int:
    from components.bench.ingest_stack import run_benchmark

    extra = dict(item.split("=", 1) for item in args.stack_env)
    result = run_benchmark(Path(args.out), lfw_photos=args.lfw_photos, warmup_photos=args.warmup_photos,
                           shard_size=args.shard_size, stack_dir=Path(args.stack_dir) if args.stack_dir else None,
                           stack_env=extra, timeout_s=args.timeout_s,
                           command="faces bench ingest-stack " + " ".join(sys.argv[3:]))
    entry = result["results"]["lfw"]
    print(json.dumps({"direct_photos_per_hour": entry["workflow_direct"]["photos_per_hour"],
                      "airflow_photos_per_hour": entry["airflow"]["photos_per_hour"],
                      "airflow_throughput_over_direct": entry["airflow_throughput_over_direct"],
                      "task_instances": entry["airflow"]["task_instances"],
                      "outside_components_per_task_s": entry["airflow"]["outside_components_per_task_s"],
                      "load_1min": entry["load_1min"]}, indent=2))
    print(f"written: {args.out}")
    return 0


def cmd_bench_detect(args, settings) -> int:
    from components.bench.detect import run_benchmark

    sizes = {"composed": 12, "collages": 12, "lfw_photos": 48} if args.quick else {}
    result = run_benchmark(settings, out=Path(args.out), composed=sizes.get("composed", args.composed),
                           collages=sizes.get("collages", args.collages), lfw_photos=sizes.get("lfw_photos", args.lfw_photos),
                           seed=args.seed, command="faces bench detect " + " ".join(sys.argv[3:]))
    print(json.dumps({name: {d: {k: v for k, v in entry[d].items() if k in ("recall_40_plus", "main_face_found",
                                                                             "precision", "seconds_per_photo")}
                             for d in ("mtcnn_package", "current", "fast")} for name, entry in result["sets"].items()},
                     indent=2))
    print(f"bound met: {result['bound_met']}; load average during: {result['load_average']['during_1min']}")
    print(f"written: {args.out}")
    return 0


def cmd_bench_cluster(args, settings) -> int:
    from components.bench.cluster import main as bench_cluster_main

    return bench_cluster_main(args, settings)


def cmd_bench_retrain(args, settings) -> int:
    from components.bench.retrain import run_benchmark

    if args.cycle_faces:
        from components.bench.retrain import run_cycle_benchmark

        result = run_cycle_benchmark(settings, Path(args.out), "faces bench retrain " + " ".join(sys.argv[3:]),
                                     faces=args.cycle_faces, progress=not args.no_progress,
                                     log=lambda line: print(line, file=sys.stderr, flush=True))
        print(json.dumps(result["cycle"], indent=2, default=float))
        print(f"written: {args.out}")
        return 0
    protocols = args.protocols.split(",") if args.protocols else None
    result = run_benchmark(settings, out=Path(args.out), command="faces bench retrain " + " ".join(sys.argv[3:]),
                           protocols=protocols, progress=not args.no_progress,
                           log=lambda line: print(line, file=sys.stderr, flush=True))
    for row in result["table"]:
        print(json.dumps(row))
    print(f"written: {args.out}")
    return 0


def cmd_bench_synthetic_gradients(args, settings) -> int:
    from components.bench.synthetic_gradients import run_benchmark

    result = run_benchmark(settings, out=Path(args.out), steps=args.steps, batch_size=args.batch_size,
                           size=args.size, seeds=args.seeds, progress=not args.no_progress)
    print(json.dumps(result["table"], indent=2))
    print(f"written: {args.out}")
    return 0


def cmd_bench_ui(args, settings) -> int:
    from components.bench.ui import main as bench_ui_main

    return bench_ui_main(args, settings)


def cmd_identities(args, settings) -> int:
    from components.identities.cli import main as identities_main
    from components.workflow.purge import purge

    # A deleted person's faces go from the workflow's batch artefacts and quarantine too.
    return identities_main(args, settings, after_delete=lambda store: purge(store, settings=settings))


def cmd_purge(args, settings) -> int:
    from components.workflow.purge import main as purge_main

    return purge_main(args, settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="faces", description="Self-hosted, unsupervised face recognition.")
    parser.add_argument("--params", help="params.yaml to use (default: $FACES_PARAMS or the project's)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("setup-model", help="download the pretrained embedder weights (checksummed) and convert them to Keras")
    p.set_defaults(func=cmd_setup_model)

    p = sub.add_parser("run", help="photos in, identities out: detect, embed, cluster, store, report")
    p.add_argument("--input", help="folder of photos (default: the LFW demo subset)")
    p.add_argument("--out", help="output folder (default: run.out_dir in params.yaml)")
    p.add_argument("--db", help="SQLAlchemy URL of the identity store (default: sqlite in the output folder)")
    p.add_argument("--folder-labels", action=argparse.BooleanOptionalAction, default=False,
                   help="treat each photo's folder name as the true identity (to score clustering)")
    p.add_argument("--full-recluster", action="store_true",
                   help="re-cluster every face, not just the unknown pool (identity ids and names are kept)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("verify", help="is the person of photo B anywhere in photo A? (JSON, every face of A scored)")
    p.add_argument("photo_a")
    p.add_argument("photo_b")
    p.add_argument("--threshold", type=float, help="cosine similarity threshold (default: the model's own verify threshold)")
    p.set_defaults(func=cmd_verify)

    bench = sub.add_parser("bench", help="benchmarks; each writes JSON under bench/results/")
    bench_sub = bench.add_subparsers(dest="benchmark", required=True)
    p = bench_sub.add_parser("lfw-verify", help="LFW View 2 10-fold verification, beside the dlib reference pipeline")
    p.add_argument("--out", default="bench/results/lfw_verify.json")
    p.add_argument("--no-dlib", action="store_true", help="skip the dlib reference pipeline")
    p.add_argument("--speed-photos", type=int, default=300, help="photos timed side by side (every pipeline, same photos)")
    p.add_argument("--repeats", type=int, default=3, help="timing repeats; the median is reported")
    p.set_defaults(func=cmd_bench_lfw_verify)
    p = bench_sub.add_parser("candidates", help="the pretrained candidates (dlib, FaceRes, test-time flip, their "
                             "fusion) on LFW View 2 10-fold verification")
    p.add_argument("--out", default="bench/results/candidates.json")
    p.add_argument("--no-progress", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_bench_candidates)
    p = bench_sub.add_parser("cluster-threshold",
                             help="calibrate the Chinese Whispers threshold on LFW folds 1-5, score on folds 6-10")
    p.add_argument("--out", default="bench/results/cluster_threshold.json")
    p.set_defaults(func=cmd_bench_cluster_threshold)
    p = bench_sub.add_parser("cluster", help="every clustering algorithm on LFW (quality) and synthetic data (scale)")
    p.add_argument("--out", default="bench/results/cluster.json")
    p.add_argument("--part", choices=["all", "quality", "scale", "stream"], default="all")
    p.add_argument("--sizes", default="10000,100000,1000000", help="synthetic sizes for the scale part")
    p.add_argument("--algorithms", help="comma-separated subset (default: all)")
    p.set_defaults(func=cmd_bench_cluster)
    p = bench_sub.add_parser("ingest", help="photos per hour through face_ingest (LFW and full-HD), step by step, DAG vs direct")
    p.add_argument("--out", default="bench/results/ingest.json")
    p.add_argument("--lfw-photos", type=int, default=256, help="LFW photos (250x250) in the batch")
    p.add_argument("--fullhd-photos", type=int, default=32, help="composed 1920x1080 photos in the batch")
    p.add_argument("--shard-size", type=int, default=None, help="photos per detect/embed task (default: workflow.shard_size)")
    p.add_argument("--no-dag", action="store_true",
                   help="skip the `airflow dags test` paths (the replaced result's DAG figures are kept, labelled as its)")
    p.add_argument("--no-baseline", action="store_true", help="skip the `faces run` baseline")
    p.add_argument("--baseline-detect-mode", choices=["package", "fast", "none"], default="package",
                   help="also run the direct steps with this detector (detect.mode), beside params.yaml's; none: skip")
    p.add_argument("--direct-repeats", type=int, default=1,
                   help="rounds of the direct steps per detector, taking turns (the best round counts)")
    p.set_defaults(func=cmd_bench_ingest)
    p = bench_sub.add_parser("ingest-stack", help="face_ingest through the real Airflow of `make up` (REST trigger, "
                                                  "scheduler, LocalExecutor) beside the direct path, same photos and S3")
    p.add_argument("--out", default="bench/results/ingest_stack.json")
    p.add_argument("--lfw-photos", type=int, default=1000, help="LFW photos in the measured batch")
    p.add_argument("--warmup-photos", type=int, default=8, help="LFW photos in the warm-up batch (run first, timed apart)")
    p.add_argument("--shard-size", type=int, default=None,
                   help="trigger parameter shard_size (default: left out, as the trigger form: workflow.shard_size)")
    p.add_argument("--stack-dir", help="use the stack already running from this run dir (its STACK_* ports from the "
                                       "environment) instead of starting one on free ports")
    p.add_argument("--stack-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for a stack this command starts (e.g. AIRFLOW__SCHEDULER__... settings)")
    p.add_argument("--timeout-s", type=float, default=1800, help="per DAG run")
    p.set_defaults(func=cmd_bench_ingest_stack)
    p = bench_sub.add_parser("serve", help="the BentoML service under load (1, 8, 32 clients) beside the same work in-process")
    p.add_argument("--out", default="bench/results/serve.json")
    p.add_argument("--levels", default="1,8,32", help="concurrent clients, comma-separated")
    p.add_argument("--duration", type=float, default=20.0, help="seconds measured per level and endpoint")
    p.add_argument("--baseline-detect-mode", choices=["package", "fast", "none"], default="package",
                   help="also measure a second service with this detector (detect.mode), level by level beside "
                        "params.yaml's (default: package, the detector before the fast one); none: skip")
    p.set_defaults(func=cmd_bench_serve)
    p = bench_sub.add_parser("soak", help="the BentoML service under 32 clients for minutes while batches are "
                                          "ingested and a new model is promoted: errors, memory growth, load average")
    p.add_argument("--out", default="bench/results/soak.json")
    p.add_argument("--minutes", type=float, default=10.0, help="how long the clients run (default 10)")
    p.add_argument("--clients", type=int, default=32, help="closed-loop clients, half /verify, half /identify")
    p.add_argument("--promote-at", type=float, help="minutes into the soak when a new model version is registered, "
                   "promoted, the store re-embedded and the service reloaded (default: half way)")
    p.add_argument("--no-promotion", action="store_true", help="no model promotion during the soak")
    p.set_defaults(func=cmd_bench_soak)
    p = bench_sub.add_parser("detect", help="recall and precision against known boxes, and seconds per photo: the "
                             "mtcnn package image by image, the detector before the fast one, the fast one")
    p.add_argument("--out", default="bench/results/detect.json")
    p.add_argument("--composed", type=int, default=200, help="full-HD photos composed from LFW faces of 20-400 px")
    p.add_argument("--collages", type=int, default=200, help="collages of 2-4 LFW photos")
    p.add_argument("--lfw-photos", type=int, help="a seeded sample of pairs.txt's photos (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="12 composed photos, 12 collages, 48 LFW photos (a few minutes)")
    p.set_defaults(func=cmd_bench_detect)
    p = bench_sub.add_parser("reembed", help="a store of LFW's faces moved to a new model, beside plain embedding")
    p.add_argument("--out", default="bench/results/reembed.json")
    p.add_argument("--faces", type=int, help="first N cached LFW faces (default: all, 13k+)")
    p.add_argument("--batch-size", type=int, default=256, help="faces per staged batch")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_bench_reembed)
    p = bench_sub.add_parser("retrain", help="self-labelled retraining on three LFW protocols (generalisation, "
                             "personalisation, domain shift): pretrained, self-labelled and oracle rows")
    p.add_argument("--out", default="bench/results/retrain.json")
    p.add_argument("--protocols", help="comma-separated subset of generalisation, personalisation, "
                   "domain_shift_generalisation, domain_shift_personalisation (default: all)")
    p.add_argument("--cycle-faces", type=int, help="instead: time one full cycle from a store of this many LFW faces "
                   "(e.g. 5000 -> --out bench/results/retrain_cycle.json)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_bench_retrain)
    p = bench_sub.add_parser("synthetic-gradients",
                             help="small backbone on LFW crops: synthetic gradients beside back-propagation")
    p.add_argument("--out", default="bench/results/synthetic_gradients.json")
    p.add_argument("--steps", type=int, default=800, help="training steps per mode")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--size", type=int, default=64, help="crop side for the small backbone (crops are 150)")
    p.add_argument("--seeds", type=int, default=2, help="repetitions with other initial weights and batch orders")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_bench_synthetic_gradients)

    p = bench_sub.add_parser("ui", help="the people page on a store of LFW's size (5,000 people, 13k faces): "
                             "server time of each screen")
    p.add_argument("--out", default="bench/results/ui.json")
    p.add_argument("--people", type=int, default=5000, help="people in the generated store")
    p.add_argument("--faces", type=int, default=13000, help="faces in the generated store")
    p.add_argument("--repeats", type=int, default=20, help="requests timed per screen; the median and p95 are reported")
    p.add_argument("--store", help="folder for the generated store (default: a temporary folder, removed afterwards)")
    p.set_defaults(func=cmd_bench_ui)

    from components.storage.cli import add_parsers as add_storage_parsers  # upload
    from components.validate.cli import add_parsers as add_validate_parsers  # validate

    add_storage_parsers(sub)
    add_validate_parsers(sub)

    from components.train.commands import add_parsers as add_training_parsers  # train, retrain

    add_training_parsers(sub)

    from components.train.model_commands import add_parsers as add_models_parsers  # models list|show|promote|calibrate

    add_models_parsers(sub)

    from components.engine.commands import add_parsers as add_reembed_parsers  # reembed

    add_reembed_parsers(sub)

    p = sub.add_parser("identities", help="list, show, rename, merge, split or delete identities")
    p.add_argument("--db", help="SQLAlchemy URL of the identity store (default: sqlite in run.out_dir)")
    ops = p.add_subparsers(dest="operation", required=True)
    ops.add_parser("list", help="every identity with its size and name")
    q = ops.add_parser("show", help="one identity: its faces and history")
    q.add_argument("identity", type=int)
    q = ops.add_parser("rename", help="give an identity a name")
    q.add_argument("identity", type=int)
    q.add_argument("name")
    q = ops.add_parser("merge", help="merge identities into the first one")
    q.add_argument("into", type=int)
    q.add_argument("others", type=int, nargs="+")
    q = ops.add_parser("split", help="move faces out of an identity into a new one")
    q.add_argument("identity", type=int)
    q.add_argument("faces", type=int, nargs="+", help="face ids to move out")
    q = ops.add_parser("delete", help="delete an identity and everything derived from it (crops, embeddings, "
                                      "batch artefacts, quarantine copies)")
    q.add_argument("identity", type=int)
    q.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=cmd_identities)

    p = sub.add_parser("purge", help="remove deleted people's faces from the work area's batch artefacts and the "
                                     "quarantine (identities delete runs it; run it again after a failure)")
    p.add_argument("--db", help="SQLAlchemy URL of the identity store (default: sqlite in run.out_dir)")
    p.set_defaults(func=cmd_purge)

    from components.ui.server import add_parsers as add_ui_parsers  # ui: the people page

    add_ui_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    _quiet_tensorflow()
    from components.settings import load_settings

    args = build_parser().parse_args(argv)
    settings = load_settings(args.params)
    return args.func(args, settings)


if __name__ == "__main__":
    sys.exit(main())
