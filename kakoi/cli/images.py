"""The image commands of `kakoi`: load, save, images, tag, rmi, inspect.

cli/main.py imports this module on every command, `kakoi run` included. So the top level
imports only argparse and sys, and the handlers import the image store with its tar, gzip
and json work.
"""

from __future__ import annotations

import argparse
import sys

_SAVE_FORMATS = ("docker-archive", "oci-archive")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the image subcommands, each with `func` set to its handler."""
    load = subparsers.add_parser("load", help="load images from a docker-archive or OCI archive")
    load.add_argument("-i", "--input", help="read the archive from FILE instead of stdin")
    load.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    load.set_defaults(func=load_command)

    save = subparsers.add_parser("save", help="save images to an archive")
    save.add_argument("images", nargs="+", metavar="IMAGE")
    save.add_argument("-o", "--output", help="write to FILE instead of stdout")
    save.add_argument("--format", choices=_SAVE_FORMATS, default="docker-archive",
                      help="archive format (default: %(default)s)")
    save.set_defaults(func=save_command)

    images = subparsers.add_parser("images", help="list images")
    images.add_argument("-q", "--quiet", action="store_true", help="print image ids only")
    images.add_argument("--no-trunc", action="store_true", help="print full image ids")
    images.add_argument("--digests", action="store_true", help="add a DIGEST column")
    images.set_defaults(func=images_command)

    tag = subparsers.add_parser("tag", help="add a name to an image")
    tag.add_argument("source", metavar="SOURCE_IMAGE")
    tag.add_argument("target", metavar="TARGET_IMAGE")
    tag.set_defaults(func=tag_command)

    rmi = subparsers.add_parser("rmi", help="remove images")
    rmi.add_argument("images", nargs="+", metavar="IMAGE")
    rmi.add_argument("-f", "--force", action="store_true",
                     help="remove images with several names, and untag images used by containers")
    rmi.set_defaults(func=rmi_command)

    inspect = subparsers.add_parser("inspect", help="print image details as a JSON list")
    inspect.add_argument("images", nargs="+", metavar="IMAGE")
    inspect.set_defaults(func=inspect_command)


def _store(args: argparse.Namespace):
    from kakoi.image.store import DEFAULT_ROOT, Store

    store = Store(getattr(args, "root", None) or DEFAULT_ROOT)
    store.check_root()
    return store


def load_command(args: argparse.Namespace) -> int:
    from kakoi.image import reference

    if args.input:
        loaded = _store(args).load(args.input)
    else:
        from kakoi.errors import InvalidArgument

        # Python sets sys.stdin to None when file descriptor 0 is closed.
        if sys.stdin is None:
            raise InvalidArgument("no archive given: stdin is closed; use -i FILE or pipe an "
                                  "archive to stdin")
        if sys.stdin.isatty():
            raise InvalidArgument("no archive given: use -i FILE or pipe an archive to stdin")
        loaded = _store(args).load(sys.stdin.buffer, label="stdin")
    if args.quiet:
        return 0
    for image in loaded:
        if not image.names:
            print(f"Loaded image ID: {image.id}")
        for name in image.names:
            print(f"Loaded image: {reference.parse(name).familiar()}")
    return 0


def save_command(args: argparse.Namespace) -> int:
    from kakoi.errors import InvalidArgument

    if args.output:
        _store(args).save(args.images, args.output, args.format)
        return 0
    # Python sets sys.stdout to None when file descriptor 1 is closed.
    if sys.stdout is None:
        raise InvalidArgument("cannot write the archive: stdout is closed; use -o FILE or "
                              "redirect stdout")
    if sys.stdout.isatty():
        raise InvalidArgument("cowardly refusing to save to a terminal: use -o FILE or "
                              "redirect stdout")
    sys.stdout.flush()
    _store(args).save(args.images, sys.stdout.buffer, args.format)
    return 0


def images_command(args: argparse.Namespace) -> int:
    for line in format_images(_store(args).list(), args.quiet, args.no_trunc, args.digests):
        print(line)
    return 0


def tag_command(args: argparse.Namespace) -> int:
    _store(args).tag(args.source, args.target)
    return 0


def _images_in_use(root) -> dict[str, list[str]]:
    try:
        from kakoi.engine.state import images_in_use
    except ModuleNotFoundError as error:
        # Only a missing engine.state module means no containers can exist yet; any other
        # import error is a bug and must surface.
        if error.name not in ("kakoi.engine.state",):
            raise
        return {}
    return images_in_use(root)


def rmi_command(args: argparse.Namespace) -> int:
    from kakoi.errors import KakoiError
    from kakoi.image.store import DEFAULT_ROOT

    store = _store(args)
    in_use = _images_in_use(getattr(args, "root", None) or DEFAULT_ROOT)
    status = 0
    for image in args.images:
        try:
            lines = store.remove(image, force=args.force, in_use=in_use)
        except KakoiError as error:
            print(f"kakoi: {error}", file=sys.stderr)
            status = error.exit_code if status == 0 else status
            continue
        for line in lines:
            print(line)
    return status


def inspect_command(args: argparse.Namespace) -> int:
    import json

    from kakoi.errors import ImageNotFound

    store = _store(args)
    results = []
    status = 0
    for image in args.images:
        try:
            results.append(store.inspect(image))
        except ImageNotFound as error:
            print(f"kakoi: {error}", file=sys.stderr)
            status = 1
    print(json.dumps(results, indent=4))
    return status


def format_images(records: list, quiet: bool = False, no_trunc: bool = False,
                  digests: bool = False, now: float | None = None) -> list[str]:
    """Return the lines of `kakoi images`: one row per name, `<none>` for unnamed images."""
    from kakoi.image import reference

    def image_id(record) -> str:
        return record.id if no_trunc else record.id[len("sha256:"):][:12]

    if quiet:
        return list(dict.fromkeys(image_id(record) for record in records))

    rows = [["REPOSITORY", "TAG"] + (["DIGEST"] if digests else []) +
            ["IMAGE ID", "CREATED", "SIZE"]]
    for record in records:
        for name in record.names or [None]:
            parsed = reference.parse(name) if name else None
            repository = parsed.familiar_name() if parsed else "<none>"
            tag = (parsed.tag or "<none>") if parsed else "<none>"
            row = [repository, tag] + ([record.manifest_digest] if digests else [])
            row += [image_id(record), humanize_created(record.created, now),
                    humanize_size(record.size)]
            rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["   ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
            for row in rows]


def humanize_size(size: int) -> str:
    """Format a byte count as Docker does: decimal units, three significant digits."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.3g}{unit}"
        value /= 1000
    return f"{value:.3g}TB"


def humanize_created(created: str | None, now: float | None = None) -> str:
    """Format an RFC 3339 time as Docker's CREATED column does, e.g. "2 days ago"."""
    import calendar
    import time

    if not created:
        return "N/A"
    try:
        stamp = calendar.timegm(time.strptime(created[:19], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return "N/A"
    seconds = max(0, int((time.time() if now is None else now) - stamp))
    return _human_duration(seconds) + " ago"


def _human_duration(seconds: int) -> str:
    minutes, hours, days = seconds / 60, seconds / 3600, seconds / 86400
    if seconds < 1:
        return "Less than a second"
    if seconds == 1:
        return "1 second"
    if seconds < 60:
        return f"{seconds} seconds"
    if round(minutes) == 1:
        return "About a minute"
    if minutes < 60:
        return f"{round(minutes)} minutes"
    if round(hours) == 1:
        return "About an hour"
    if hours < 48:
        return f"{round(hours)} hours"
    if days < 14:
        return f"{int(days)} days"
    if days < 60:
        return f"{int(days / 7)} weeks"
    if days < 730:
        return f"{int(days / 30)} months"
    return f"{int(days / 365)} years"
