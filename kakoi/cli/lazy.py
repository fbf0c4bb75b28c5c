"""Build the parser of the one subcommand being run, not of all of them.

argparse spends about half a millisecond on each subparser and its help strings, which
adds up to 10 ms over a command line of many commands: a large share of a container
start. The command modules keep their `register(subparsers)` functions; OneCommand
replaces the subparsers action and keeps only the parser of the named command.
"""

import argparse
import os


class _Ignored:
    """A parser stand-in whose methods do nothing: the parser of another command."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: self


class OneCommand:
    """Stands in for the action of add_subparsers, building only the wanted command."""

    def __init__(self, wanted: str, prog: str, parser_class: type[argparse.ArgumentParser]):
        self.wanted = wanted
        self.prog = prog
        self.parser_class = parser_class
        self.parser: argparse.ArgumentParser | None = None

    def add_parser(self, name: str, **kwargs):
        aliases = kwargs.pop("aliases", ())
        if name != self.wanted and self.wanted not in aliases:
            return _Ignored()
        kwargs.pop("help", None)
        self.parser = self.parser_class(prog=f"{self.prog} {name}", **kwargs)
        return self.parser


def split_command(argv: list[str], global_flags_with_values: set[str]) -> int | None:
    """Return the index of the first argument that is not a global flag, or None.

    Global flags come before the command, as in runc and docker; the flags in
    global_flags_with_values take the next argument unless written as --flag=value.
    """
    index = 0
    while index < len(argv):
        argument = argv[index]
        if not argument.startswith("-") or argument == "-":
            return index
        if argument == "--":
            return index + 1 if index + 1 < len(argv) else None
        if argument in global_flags_with_values:
            index += 1
        index += 1
    return None


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, given a width so that it does not import shutil to find one.

    argparse makes a formatter for every add_argument call, and without a width each
    one imports shutil (with bz2 and lzma: about 3 ms) to read the terminal size.
    """

    def __init__(self, prog: str):
        try:
            columns = os.get_terminal_size(2).columns
        except OSError:
            columns = int(os.environ.get("COLUMNS", "80") or 80)
        super().__init__(prog, width=max(columns - 2, 40))
