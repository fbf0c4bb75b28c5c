"""The `kakoi` command: Docker-like commands over the local store.

Only argparse and the command modules' parsers load at start-up; each handler
imports what it needs, so that `kakoi run` pays for nothing it does not use.
"""

import argparse
import os
import sys

from kakoi import __version__
from kakoi.cli.lazy import HelpFormatter, OneCommand, split_command
from kakoi.errors import KakoiError

# kakoi ships no message catalogs. argparse's lookup of them (through gettext) imports locale,
# about 5 ms of every command, to find nothing.
argparse._ = lambda message: message
argparse.ngettext = lambda singular, plural, count: singular if count == 1 else plural

DEFAULT_ROOT = "/var/lib/kakoi"


class ArgumentParser(argparse.ArgumentParser):
    """Report bad flags with Docker's exit code 125 instead of argparse's 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(125, f"kakoi: {message}\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Return the parser; with command, one whose subcommand parser is built for it alone."""
    from kakoi.cli import build, containers, images, registry

    parser = ArgumentParser(prog="kakoi", description="Run OCI containers.")
    parser.add_argument("--version", action="version", version=f"kakoi {__version__}")
    parser.add_argument("--root", default=os.environ.get("KAKOI_ROOT", DEFAULT_ROOT),
                        help="directory of kakoi's images and containers "
                             "(default: $KAKOI_ROOT or /var/lib/kakoi)")
    parser.add_argument("--debug", action="store_true", help="log decisions to stderr")
    if command is None:
        subparsers = parser.add_subparsers(dest="command", metavar="COMMAND",
                                           parser_class=ArgumentParser)
    else:
        subparsers = OneCommand(command, "kakoi", ArgumentParser)
    containers.register(subparsers)
    images.register(subparsers)
    build.register(subparsers)
    registry.register(subparsers)
    if command is not None:
        parser.add_argument("command", choices=[command])
        parser.add_argument("arguments", nargs=argparse.REMAINDER)
        parser.set_defaults(subparser=subparsers.parser)
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse the global flags, then the command's own flags with that command's parser."""
    index = split_command(argv, {"--root"})
    command = argv[index] if index is not None else None
    parser = build_parser(command)
    if command is None or parser.get_default("subparser") is None:
        return build_parser().parse_args(argv)  # help, version, or an unknown command
    args = parser.parse_args(argv)
    args.subparser.parse_args(args.arguments, namespace=args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if not getattr(args, "func", None):
        build_parser().print_help(sys.stderr)
        return 125
    if args.debug:
        from kakoi import log
        log.enable_debug()
    try:
        return args.func(args)
    except KakoiError as error:
        print(f"kakoi: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 141


if __name__ == "__main__":
    sys.exit(main())
