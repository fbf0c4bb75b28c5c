"""The registry commands of `kakoi`: pull, push, login, logout.

cli/main.py imports this module on every command, so the top level imports only argparse and
sys; the handlers import the registry client, and rich only on a terminal.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the registry subcommands, each with `func` set to its handler."""
    pull = subparsers.add_parser("pull", help="pull an image from a registry")
    pull.add_argument("image", metavar="NAME[:TAG|@DIGEST]")
    pull.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                      help="pull the image for this platform (default: the host's)")
    pull.add_argument("-q", "--quiet", action="store_true",
                      help="print only the image reference")
    pull.add_argument("--unpack", choices=("true", "false"), default="true",
                      help="unpack the layers now (default), or only store the verified blobs "
                           "and unpack them when a container or build first uses the image")
    pull.set_defaults(func=pull_command)

    push = subparsers.add_parser("push", help="push an image to a registry")
    push.add_argument("source", metavar="SRC", help="image in the local store")
    push.add_argument("destination", metavar="DEST", nargs="?",
                      help="REGISTRY/NAME[:TAG] to push to (default: SRC's own name)")
    push.add_argument("-q", "--quiet", action="store_true",
                      help="print only the pushed reference")
    push.set_defaults(func=push_command)

    login = subparsers.add_parser("login", help="log in to a registry")
    login.add_argument("server", metavar="REGISTRY", nargs="?", default="docker.io",
                       help="registry HOST[:PORT] (default: docker.io)")
    login.add_argument("-u", "--username", help="user name (default: ask on the terminal)")
    login.add_argument("-p", "--password",
                       help="password; prefer --password-stdin, because this one shows in ps")
    login.add_argument("--password-stdin", action="store_true",
                       help="read the password from stdin")
    login.set_defaults(func=login_command)

    logout = subparsers.add_parser("logout", help="log out from a registry")
    logout.add_argument("server", metavar="REGISTRY", nargs="?", default="docker.io",
                        help="registry HOST[:PORT] (default: docker.io)")
    logout.set_defaults(func=logout_command)


def pull_command(args: argparse.Namespace) -> int:
    from kakoi.image import reference
    from kakoi.image.store import DEFAULT_ROOT, Store
    from kakoi.registry import manifest, progress
    from kakoi.registry.pull import pull

    platform = manifest.parse_platform(args.platform) if args.platform else None
    ref = reference.parse(args.image)
    store = Store(getattr(args, "root", None) or DEFAULT_ROOT)
    store.check_root()
    output = progress.for_output(args.quiet)
    try:
        result = pull(store, args.image, platform, output, unpack=args.unpack == "true")
    finally:
        output.close()
    if args.quiet:
        print(str(ref))
        return 0
    print(f"Digest: {result.digest}")
    status = "Downloaded newer image" if result.updated else "Image is up to date"
    print(f"Status: {status} for {ref.familiar()}")
    print(str(ref))
    return 0


def push_command(args: argparse.Namespace) -> int:
    from kakoi.image.store import DEFAULT_ROOT, Store
    from kakoi.registry.push import for_output, push

    store = Store(getattr(args, "root", None) or DEFAULT_ROOT)
    store.check_root()
    output = for_output(args.quiet)
    try:
        result = push(store, args.source, args.destination, output)
    finally:
        output.close()
    if args.quiet:
        print(f"{args.destination or args.source}@{result.digest}")
        return 0
    print(f"{result.tag}: digest: {result.digest} size: {result.size}")
    return 0


def _server(text: str) -> str:
    """Return HOST[:PORT] from a registry argument, which may be written as a URL."""
    from kakoi.errors import InvalidArgument

    host = text.split("://", 1)[-1].split("/", 1)[0].strip()
    if not host:
        raise InvalidArgument(f"invalid registry {text!r}: expected HOST[:PORT]")
    return "docker.io" if host in ("index.docker.io", "registry-1.docker.io") else host


def _read_password(args: argparse.Namespace) -> str:
    from kakoi.errors import InvalidArgument

    if args.password_stdin:
        if args.password is not None:
            raise InvalidArgument("--password and --password-stdin are mutually exclusive; "
                                  "give one of them")
        if sys.stdin is None:
            raise InvalidArgument("cannot read the password: stdin is closed")
        return sys.stdin.read().rstrip("\r\n")
    if args.password is not None:
        print("WARNING! Using --password via the CLI is insecure. Use --password-stdin.",
              file=sys.stderr)
        return args.password
    if sys.stdin is None or not sys.stdin.isatty():
        raise InvalidArgument("no password given: use --password-stdin or run on a terminal")
    import getpass

    return getpass.getpass("Password: ")


def login_command(args: argparse.Namespace) -> int:
    from kakoi.errors import InvalidArgument
    from kakoi.registry.pull import login

    server = _server(args.server)
    username = args.username
    if not username:
        if args.password_stdin or sys.stdin is None or not sys.stdin.isatty():
            raise InvalidArgument("no user name given: use -u USER with --password-stdin")
        username = input("Username: ").strip()
    password = _read_password(args)
    if not username or not password:
        raise InvalidArgument("user name and password must not be empty; give both")
    login(server, username, password)
    print("Login Succeeded")
    return 0


def logout_command(args: argparse.Namespace) -> int:
    from kakoi.registry import credentials

    server = _server(args.server)
    if credentials.remove(server):
        print(f"Removing login credentials for {server}")
    else:
        print(f"Not logged in to {server}")
    return 0
