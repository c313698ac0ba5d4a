"""``faces identities list|show|rename|merge|split|delete``: the user's hand on identities.

``list`` prints a table; every other operation prints JSON (``show``: the faces and
the history; the others: what changed). A request that cannot be carried out
prints one line on stderr and exits with 2; declining the ``delete``
confirmation exits with 1 and changes nothing.
"""

from __future__ import annotations

import getpass
import json
import sys
from pathlib import Path
from collections.abc import Callable
from typing import TextIO

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError

from components.identities import operations
from components.identities.crops import crops_root_for
from components.identities.lifecycle import Policy
from components.identities.store import IdentityStore

EXIT_OK, EXIT_DECLINED, EXIT_ERROR = 0, 1, 2


def default_url(settings) -> str:
    """``sqlite:///<run.out_dir>/faces.db``, where ``faces run`` puts the store."""
    return f"sqlite:///{Path(settings.run.out_dir) / 'faces.db'}"


def crops_root(url: str, settings) -> str:
    """Where the stored relative crop paths start (a folder or ``s3://bucket/prefix``).

    ``$FACES_CROPS_ROOT`` when set; else, for a SQLite store, the folder holding the
    file (``faces run`` writes the store and the crops side by side); else the DAGs'
    work area ``$FACES_WORK_URI`` (a server database filled by ``face_ingest``); else
    ``run.out_dir``. Crops stored as ``s3://`` URIs need no root; local files are
    deleted only inside it.
    """
    import os

    return crops_root_for(url) or os.environ.get("FACES_WORK_URI") or str(Path(settings.run.out_dir))


def actor() -> str:
    """Who runs the command, for the audit trail."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name (e.g. a container's anonymous uid)
        return "cli"


def format_table(identities: list[dict], pool: int) -> str:
    """A readable table of identities, plus the pool size."""
    if not identities:
        return f"no identities ({pool} faces in the unknown pool)"
    header = ("id", "name", "faces", "medoid face", "updated")
    rows = [(str(item["id"]), item["name"] or "-", str(item["size"]), str(item["medoid_face_id"]), item["updated_at"] or "-")
            for item in identities]
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.append(f"{len(identities)} identities, {sum(item['size'] for item in identities)} faces; "
                 f"{pool} faces in the unknown pool")
    return "\n".join(lines)


def _shown(url: str) -> str:
    """The URL as safe to print (no password)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _open(url: str) -> IdentityStore:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        if not Path(parsed.database).is_file():
            # Opening would create an empty store; a typo deserves an error instead.
            raise operations.IdentityError(f"no identity store at {parsed.database}; run `faces run` first or pass --db")
    return IdentityStore(url)


def _confirm(summary: dict, stdin: TextIO, stderr: TextIO) -> bool:
    name = f" ({summary['name']})" if summary["name"] else ""
    stderr.write(f"Delete identity {summary['id']}{name}: {summary['size']} faces, their crops and embeddings? "
                 "This cannot be undone. [y/N] ")
    stderr.flush()
    answer = stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def main(args, settings, *, stdout: TextIO | None = None, stderr: TextIO | None = None, stdin: TextIO | None = None,
         after_delete: Callable[[IdentityStore], dict] | None = None) -> int:
    """Run one ``faces identities`` operation.

    Args:
        args: parsed arguments (``operation``, ``db`` and the operation's own).
        settings: :class:`components.settings.Settings`.
        stdout, stderr, stdin: streams (default: the process's), for tests.
        after_delete: called with the store after a delete committed (``faces`` passes
            :func:`components.workflow.purge.purge`: the deleted faces' copies outside the
            store go too); what it returns is printed on stderr as ``purged: {JSON}``
            (stdout keeps the delete's own JSON). If it raises, the delete stands, the
            error is printed and the exit code is 2.

    Returns:
        0 on success, 1 when a delete was not confirmed, 2 on an error.
    """
    stdout, stderr, stdin = stdout or sys.stdout, stderr or sys.stderr, stdin or sys.stdin
    url = args.db or default_url(settings)
    policy = Policy.from_settings(settings)
    try:
        store = _open(url)
        operation = args.operation
        if operation == "list":
            identities = store.identity_list()
            if getattr(args, "json", False):
                stdout.write(json.dumps({"identities": identities, "pool": len(store.pool_face_ids())}, indent=2) + "\n")
            else:
                stdout.write(format_table(identities, len(store.pool_face_ids())) + "\n")
            return EXIT_OK
        if operation == "show":
            result = operations.show(store, args.identity)
        elif operation == "rename":
            result = operations.rename(store, args.identity, args.name, actor=actor())
        elif operation == "merge":
            result = operations.merge(store, args.into, args.others, actor=actor(), policy=policy)
        elif operation == "split":
            result = operations.split(store, args.identity, args.faces, actor=actor(), policy=policy)
        elif operation == "delete":
            summary = operations.show(store, args.identity)
            if not args.yes and not _confirm(summary, stdin, stderr):
                stderr.write("not deleted\n")
                return EXIT_DECLINED
            result = operations.delete_identity(store, args.identity, crops_root=crops_root(url, settings), actor=actor())
            if after_delete is not None:
                try:
                    purged = after_delete(store)
                except Exception as error:  # noqa: BLE001 - the delete itself is done; say what is left
                    stdout.write(json.dumps(result, indent=2, default=str) + "\n")
                    stderr.write(f"error: identity {args.identity} is deleted, but copies of its faces outside the "
                                 f"store (batch artefacts, quarantine) could not be removed: {error}; "
                                 "run `faces purge` to finish\n")
                    return EXIT_ERROR
                stderr.write(f"purged: {json.dumps(purged, default=str)}\n")
        else:
            raise operations.IdentityError(f"unknown operation {operation!r}")
    except operations.IdentityError as error:
        stderr.write(f"error: {error}\n")
        return EXIT_ERROR
    except ArgumentError as error:
        stderr.write(f"error: --db {_shown(url)!r} is not a database URL ({error})\n")
        return EXIT_ERROR
    except OperationalError as error:
        stderr.write(f"error: cannot use the identity store at {_shown(url)}: {str(error.orig or error).strip()}\n")
        return EXIT_ERROR
    except SQLAlchemyError as error:
        stderr.write(f"error: the identity store failed: {error.__class__.__name__}: {str(error).splitlines()[0]}\n")
        return EXIT_ERROR
    except ValueError as error:  # e.g. embeddings of different sizes in one store
        stderr.write(f"error: {error}\n")
        return EXIT_ERROR
    stdout.write(json.dumps(result, indent=2, default=str) + "\n")
    return EXIT_OK
