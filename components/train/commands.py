"""``faces train`` and ``faces retrain``: argument parsing and the thin I/O around the loop.

Errors a user can fix (too little data, a damaged checkpoint or model, no champion) are
printed as one line with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parsers(sub) -> None:
    """Register ``train`` and ``retrain`` on the ``faces`` sub-command parser."""
    p = sub.add_parser("train", help="train an embedder on an annotated folder <root>/<label>/*.png|jpg of aligned crops")
    p.add_argument("--data", required=True, help="folder of aligned 150x150 crops, one sub-folder per person")
    p.add_argument("--network", default="small", help="components.train.networks name (small, inception_resnet_v1, ...)")
    p.add_argument("--loss", default="softmax", help="components.train.losses name (softmax, center, triplet, ...)")
    p.add_argument("--embedding-dim", type=int, default=128)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps-per-epoch", type=int, default=50)
    p.add_argument("--identities-per-batch", type=int, default=16)
    p.add_argument("--faces-per-identity", type=int, default=4)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--held-out-share", type=float, default=0.2, help="identities held out for early stopping")
    p.add_argument("--workdir", default="runs/train", help="checkpoints and the model; the same folder resumes")
    p.add_argument("--alias", help="registry alias to point at the new version (e.g. challenger)")
    p.add_argument("--no-register", action="store_true", help="do not register the model")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("retrain", help="re-fit the champion's head on the identity store's own identities; promote "
                                       "it only if it wins on held-out evidence of the same store")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--db", help="identity store to take labels and evidence from (default: the store of "
                                     "run.out_dir, where `faces run` writes)")
    source.add_argument("--lfw", action="store_true",
                        help="labels and evidence from the LFW stream (people.txt folds 1-5) instead of a store")
    p.add_argument("--limit-people", type=int, help="with --lfw: this many stream people (tests)")
    p.add_argument("--crops-root", help="where the store's relative crop paths start (folder or s3://bucket/prefix; "
                                        "default $FACES_CROPS_ROOT, else the SQLite file's folder)")
    p.add_argument("--labels", metavar="MD5", help="rebuild the training set of an earlier cycle from its label set "
                   "(the md5 of its faces.data_version, fetched from retrain.labels_remote): same store, same seed, "
                   "same challenger")
    p.add_argument("--key", help="what identifies this request: the same key again returns the recorded outcome "
                                 "and registers nothing new (default: a new key per call)")
    p.add_argument("--workdir", default="runs/retrain", help="labels, challenger file and outcome, one folder per key")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_retrain)


def _progress(line: str) -> None:
    """Progress goes to stderr: stdout carries only the JSON result."""
    print(line, file=sys.stderr, flush=True)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def cmd_train(args, settings) -> int:
    from components.track import TrackingError
    from components.track.registry import set_alias
    from components.train.data import TrainingDataError, load_folder, split_identities
    from components.train.loop import CheckpointError, TrainConfig, train

    try:
        data = load_folder(args.data, min_faces=2)
        data.check_trainable(min_identities=4, min_faces_per_identity=2)
        train_rows, val_rows = split_identities(data.labels, args.held_out_share, seed=settings.base.seed)
        config = TrainConfig(network=args.network, loss=args.loss, embedding_dim=args.embedding_dim, epochs=args.epochs,
                             steps_per_epoch=args.steps_per_epoch, identities_per_batch=args.identities_per_batch,
                             faces_per_identity=args.faces_per_identity, learning_rate=args.learning_rate,
                             patience=args.patience, seed=settings.base.seed)
        result = train(data.subset(train_rows), data.subset(val_rows), config, Path(args.workdir),
                       register=not args.no_register, extra_params={"data": str(Path(args.data).resolve())},
                       log=_progress)
        if args.alias and result.version is not None:
            set_alias(args.alias, result.version)
    except (TrainingDataError, CheckpointError, TrackingError, ValueError) as error:
        return _fail(str(error))
    print(json.dumps({"model": str(result.model_path), "version": result.version, "steps": result.step,
                      "best_epoch": result.best_epoch, "held_out": result.best, "run_id": result.run_id}, indent=2))
    if result.version is not None:
        # A new network's similarities mean nothing until its own thresholds are fitted.
        _progress(f"version {result.version} is registered without thresholds: run `faces models calibrate "
                  f"{result.version}` before promoting or serving it")
    return 0


def cmd_retrain(args, settings) -> int:
    from datetime import UTC, datetime

    from components.track import TrackingError
    from components.train.retrain import RetrainError, retrain_cycle

    from components.identities.cli import default_url

    store_url = None if args.lfw else (args.db or default_url(settings))
    key = args.key or f"cli-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}"
    try:
        outcome = retrain_cycle(settings, Path(args.workdir), key=key, labels_from="lfw" if args.lfw else "store",
                                store_url=store_url, crops_root=args.crops_root, limit_people=args.limit_people,
                                labels_rev=args.labels, progress=not args.no_progress, log=_progress)
    except (RetrainError, TrackingError) as error:
        return _fail(str(error))
    figures = ("accuracy", "auc", "tar_at_far_1e-3", "pairwise_f1", "bcubed_f1")

    def side(name: str):
        model = outcome.get(name)
        return model and {k: model.get(k) for k in ("version", *figures)}

    # A request that had already registered its version reports only the decision it recorded.
    print(json.dumps({"key": key, "decision": outcome["decision"], "labels": outcome.get("labels"),
                      "evidence": outcome.get("evidence"), "champion": side("champion"),
                      "challenger": side("challenger")}, indent=2, default=float))
    return 0
