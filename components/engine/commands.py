"""``faces reembed``: move an identity store to the registry's champion (the embedded default's face_reembed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def add_parsers(sub) -> None:
    p = sub.add_parser("reembed", help="re-embed the identity store with the champion, then switch it over")
    p.add_argument("--db", help="SQLAlchemy URL of the identity store (default: sqlite in run.out_dir)")
    p.add_argument("--crops-root", help="where relative crop paths start (default: $FACES_CROPS_ROOT or the "
                                        "SQLite file's folder)")
    p.add_argument("--alias", default="champion", help="registry alias to move to (default: champion)")
    p.add_argument("--batch-size", type=int, default=256, help="faces per staged batch (default: 256)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_reembed)


def cmd_reembed(args, settings) -> int:
    from components.embed.thresholds import UncalibratedModelError
    from components.engine import champion_model
    from components.engine.reembed import ReembedError, reembed
    from components.identities import IdentityStore
    from components.identities.store import ModelMismatchError

    if args.batch_size < 1:
        print("error: --batch-size must be at least 1", file=sys.stderr)
        return 2
    url = args.db or f"sqlite:///{Path(settings.run.out_dir) / 'faces.db'}"
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        print(f"error: no identity store at {url} (run `faces run` first, or give --db)", file=sys.stderr)
        return 2
    try:
        target = champion_model(settings, args.alias)
        report = reembed(IdentityStore(url), target, settings, batch_size=args.batch_size,
                         crops_root=args.crops_root, progress=not args.no_progress)
    except (ReembedError, ModelMismatchError, UncalibratedModelError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - the registry or the database down: one line, no traceback
        if type(error).__name__ != "TrackingError":
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0
