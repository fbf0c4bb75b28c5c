"""`kakoi build`: build an image from a Dockerfile (or Containerfile) and a context directory.

The top level imports only argparse; the handler imports the executor.
"""

from __future__ import annotations

import argparse
import os
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the build subcommand with `func` set to its handler."""
    build = subparsers.add_parser("build", help="build an image from a Dockerfile")
    build.add_argument("context", metavar="CONTEXT",
                       help="context directory, or - to read a Dockerfile from stdin")
    build.add_argument("-t", "--tag", action="append", default=[], dest="tags",
                       help="name the image NAME[:TAG] (repeatable)")
    build.add_argument("-f", "--file", help="Dockerfile path (default: CONTEXT/Dockerfile, "
                                            "else CONTEXT/Containerfile)")
    build.add_argument("--build-arg", action="append", default=[], metavar="KEY=VALUE",
                       help="set a build arg (repeatable)")
    build.add_argument("--target", help="build up to the stage of this name")
    build.add_argument("--no-cache", action="store_true", help="run every step again")
    build.add_argument("--pull", action="store_true", help="pull base images even when stored")
    build.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                       help="add a label to the image (repeatable)")
    build.add_argument("-q", "--quiet", action="store_true", help="print only the image id")
    build.add_argument("--iidfile", help="write the image id to FILE")
    build.set_defaults(func=build_command)


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    from kakoi.errors import InvalidArgument

    result = {}
    for text in values:
        key, equals, value = text.partition("=")
        if not key:
            raise InvalidArgument(f"invalid {flag} {text!r}: use KEY=VALUE")
        if not equals:
            # As in Docker, a bare KEY takes its value from the environment, if set.
            if key not in os.environ:
                continue
            value = os.environ[key]
        result[key] = value
    return result


def _dockerfile(args: argparse.Namespace) -> tuple[str, str, str | None]:
    """Return the Dockerfile text, its name for messages, and the context directory."""
    from kakoi.errors import InvalidArgument

    if args.context == "-":
        if args.file not in (None, "-"):
            with open(args.file, encoding="utf-8") as file:
                return file.read(), os.path.basename(args.file), None
        return sys.stdin.read(), "Dockerfile", None
    if not os.path.isdir(args.context):
        raise InvalidArgument(f"build context {args.context!r} is not a directory: give a "
                              "directory, or - for a Dockerfile on stdin")
    if args.file == "-":
        return sys.stdin.read(), "Dockerfile", args.context
    path = args.file
    if path is None:
        # Docker and Podman look for Dockerfile first; Podman also takes Containerfile.
        for name in ("Dockerfile", "Containerfile"):
            if os.path.isfile(os.path.join(args.context, name)):
                path = os.path.join(args.context, name)
                break
        else:
            raise InvalidArgument(f"no Dockerfile or Containerfile in {args.context}: add one "
                                  "or give -f FILE")
    try:
        with open(path, encoding="utf-8") as file:
            return file.read(), os.path.basename(path), args.context
    except OSError as error:
        raise InvalidArgument(f"cannot read {path}: {error.strerror}") from None


def _epoch() -> int | None:
    from kakoi.errors import InvalidArgument

    text = os.environ.get("SOURCE_DATE_EPOCH")
    if not text:
        return None
    if not text.isdigit():
        raise InvalidArgument(f"invalid SOURCE_DATE_EPOCH {text!r}: use seconds since 1970")
    return int(text)


def build_command(args: argparse.Namespace) -> int:
    from kakoi.build.executor import BuildOptions, build
    from kakoi.image import reference

    for tag in args.tags:
        reference.parse(tag)
    text, filename, context = _dockerfile(args)
    options = BuildOptions(
        text, filename, context, tags=args.tags,
        build_args=_pairs(args.build_arg, "--build-arg"), target=args.target,
        no_cache=args.no_cache, pull=args.pull, labels=_pairs(args.label, "--label"),
        quiet=args.quiet, cgroup_parent=os.environ.get("KAKOI_CGROUP_PARENT", "kakoi"),
        epoch=_epoch())
    image_id = build(args.root, options)
    if args.iidfile:
        with open(args.iidfile, "w") as file:
            file.write(image_id)
    print(image_id if args.quiet else f"--> {image_id}")
    return 0
