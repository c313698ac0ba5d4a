"""``faces upload``: copy a photo folder to a storage (local or S3), resumably."""

from __future__ import annotations

import json
import sys


def cmd_upload(args, settings) -> int:
    from components.storage import StorageError, open_storage, sync_folder

    try:
        storage = open_storage(args.target, settings.storage)
        result = sync_folder(args.source, storage, args.prefix, include_hidden=args.include_hidden,
                             progress=not args.no_progress)
    except (StorageError, NotADirectoryError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"target": storage.uri(args.prefix), "uploaded": len(result.uploaded),
                      "skipped": len(result.skipped), "bytes_uploaded": result.bytes_uploaded}, indent=2))
    return 0


def add_parsers(sub) -> None:
    """Register ``faces upload`` on the CLI's sub-command parser."""
    p = sub.add_parser("upload", help="copy a folder to a storage (folder or s3://bucket/prefix); resumes after a kill")
    p.add_argument("source", help="local folder (walked recursively)")
    p.add_argument("target", help="a folder or s3://bucket/prefix (endpoint and keys: S3_ENDPOINT_URL, "
                                  "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)")
    p.add_argument("--prefix", default="", help="key prefix under the target, e.g. the batch id")
    p.add_argument("--include-hidden", action="store_true", help="also upload names starting with '.'")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_upload)
