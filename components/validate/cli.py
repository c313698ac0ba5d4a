"""``faces validate``: the image suite on a photo folder or S3 prefix, from the command line."""

from __future__ import annotations

import json
import sys


def cmd_validate(args, settings) -> int:
    from components.storage import StorageError, open_storage
    from components.validate import image_table, quarantine, validate_images

    params = settings.validate
    try:
        storage = open_storage(args.source, settings.storage)
        # Every file but hidden ones, whatever its suffix: the suite judges content, with reasons.
        keys = [key for key in storage.list() if not any(part.startswith(".") for part in key.split("/"))]
        table = image_table(keys, storage=storage, max_pixels=params.image_max_pixels)
        report = validate_images(table, params, batch_id=args.batch_id,
                                 docs="always" if args.docs else None)
        where = None
        if not report.success and args.quarantine:
            where = quarantine(args.source, report.message(), report=report, params=params)
    except StorageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({**report.to_dict(), "photos": len(table), "quarantined_to": where}, indent=2, default=str))
    if not report.success:
        print(report.message(), file=sys.stderr)
    return 0 if report.success else 1


def add_parsers(sub) -> None:
    """Register ``faces validate`` on the CLI's sub-command parser."""
    p = sub.add_parser("validate", help="check a batch of photos (folder or s3://bucket/prefix) with the image suite")
    p.add_argument("source", help="a folder or s3://bucket/prefix of photos")
    p.add_argument("--batch-id", help="keys the Data Docs site (default: a hash of the batch's table)")
    p.add_argument("--docs", action="store_true", help="write the Data Docs site even when the batch passes")
    p.add_argument("--quarantine", action="store_true",
                   help="on failure, copy the batch to validate.quarantine_uri with its reasons (deletes nothing)")
    p.set_defaults(func=cmd_validate)
