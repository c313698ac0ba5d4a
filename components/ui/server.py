"""``faces ui [--db URL] [--host H] [--port P]``: the people page on one identity store.

It serves the embedded default (``run.out_dir/faces.db`` with its crops beside it) or
any store URL; a server database's relative crop paths start at ``$FACES_CROPS_ROOT``
or the DAGs' work area ``$FACES_WORK_URI`` (a folder or ``s3://bucket/prefix``), as for
``faces identities``. Sign-in needs ``FACES_API_KEY`` or ``FACES_UI_PASSWORD``.
"""

from __future__ import annotations

import os
import sys

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError


def add_parsers(sub) -> None:
    """Register ``faces ui``."""
    p = sub.add_parser("ui", help="the people page: review and correct identities in a browser (sign-in required)")
    p.add_argument("--db", help="SQLAlchemy URL of the identity store (default: sqlite in run.out_dir)")
    p.add_argument("--host", help="address to listen on (default: ui.host in params.yaml, loopback)")
    p.add_argument("--port", type=int, help="port (default: ui.port in params.yaml)")
    p.add_argument("--allow-empty", action="store_true",
                   help="start on an empty store when none exists yet (the stack, before the first ingest)")
    p.set_defaults(func=main)


def shown_url(url: str) -> str:
    """The URL as safe to print (no password)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def main(args, settings) -> int:
    import uvicorn

    from components.identities.cli import crops_root, default_url
    from components.identities.operations import IdentityError
    from components.ui.app import create_app, open_store
    from components.ui.security import ConfigurationError

    url = args.db or default_url(settings)
    host = args.host or settings.ui.host
    port = args.port or settings.ui.port
    try:
        store = open_store(url, create=args.allow_empty)
        root = crops_root(url, settings)
        app = create_app(store, settings, crops_root=root)
    except (IdentityError, ConfigurationError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ArgumentError as error:
        print(f"error: --db {shown_url(url)!r} is not a database URL ({error})", file=sys.stderr)
        return 2
    except SQLAlchemyError as error:
        print(f"error: cannot open the identity store at {shown_url(url)}: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"people page: http://{host}:{port}/  (store {shown_url(url)}, crops {root})", flush=True)
    # uvicorn's access log would list every thumbnail; warnings and errors are enough.
    uvicorn.run(app, host=host, port=port, log_level=os.environ.get("FACES_UI_LOG_LEVEL", "warning"))
    return 0
