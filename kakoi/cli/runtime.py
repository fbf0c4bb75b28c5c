"""`kakoi-runtime`: runc's command line over kakoi's runtime, for engines that drive runc.

The commands, flags and outputs follow runc 1.1, so that Podman (through conmon) and
containerd's shim can use kakoi-runtime in runc's place.
"""

import os
import sys

from kakoi import __version__
from kakoi.errors import KakoiError

SPEC_VERSION = "1.0.2"

# A hand-written parser in place of argparse: importing argparse (with gettext and
# locale) and building a parser of a dozen flags costs about 5 ms a command, and an
# engine runs several commands for every container. Each table maps a flag spelling
# to (attribute, kind), where kind is "flag" (no value), "value", "int", "append",
# "append-int", or a tuple of the allowed values.
_GLOBAL_OPTIONS = {
    "--root": ("root", "value"), "--log": ("log", "value"),
    "--log-format": ("log_format", ("text", "json")), "--debug": ("debug", "flag"),
    "--systemd-cgroup": ("systemd_cgroup", "flag"), "--criu": ("criu", "value"),
    "--rootless": ("rootless", "value"),
}
_GLOBAL_DEFAULTS = {"log": None, "log_format": "text", "debug": False,
                    "systemd_cgroup": False, "criu": None, "rootless": "auto"}

_CREATE_OPTIONS = {
    "-b": ("bundle", "value"), "--bundle": ("bundle", "value"),
    "--pid-file": ("pid_file", "value"), "--console-socket": ("console_socket", "value"),
    "--no-pivot": ("no_pivot", "flag"), "--no-new-keyring": ("no_new_keyring", "flag"),
    "--preserve-fds": ("preserve_fds", "int"),
}
_CREATE_DEFAULTS = {"bundle": ".", "pid_file": None, "console_socket": None,
                    "no_pivot": False, "no_new_keyring": False, "preserve_fds": 0}

_EXEC_OPTIONS = {
    "-p": ("process", "value"), "--process": ("process", "value"),
    "-t": ("tty", "flag"), "--tty": ("tty", "flag"),
    "--console-socket": ("console_socket", "value"),
    "-d": ("detach", "flag"), "--detach": ("detach", "flag"),
    "--pid-file": ("pid_file", "value"),
    "-e": ("env", "append"), "--env": ("env", "append"), "--cwd": ("cwd", "value"),
    "-u": ("user", "value"), "--user": ("user", "value"),
    "-g": ("additional_gids", "append-int"), "--additional-gids": ("additional_gids", "append-int"),
    "-c": ("cap", "append"), "--cap": ("cap", "append"),
    "--no-new-privs": ("no_new_privs", "flag"), "--preserve-fds": ("preserve_fds", "int"),
    "--apparmor": ("apparmor", "value"), "--process-label": ("process_label", "value"),
}
_EXEC_DEFAULTS = {"process": None, "tty": False, "console_socket": None, "detach": False,
                  "pid_file": None, "env": [], "cwd": None, "user": None,
                  "additional_gids": [], "cap": [], "no_new_privs": False, "preserve_fds": 0,
                  "apparmor": None, "process_label": None}

_UPDATE_FLAGS = ("memory", "memory-swap", "memory-reservation", "kernel-memory",
                 "kernel-memory-tcp", "cpu-shares", "cpu-quota", "cpu-period", "cpuset-cpus",
                 "cpuset-mems", "pids-limit", "blkio-weight", "cpu-rt-period",
                 "cpu-rt-runtime", "l3-cache-schema", "mem-bw-schema")
_UPDATE_OPTIONS = {"-r": ("resources", "value"), "--resources": ("resources", "value"),
                   **{f"--{flag}": (flag.replace("-", "_"), "value") for flag in _UPDATE_FLAGS}}

_FORMAT_OPTIONS = {"-f": ("format", ("table", "json")), "--format": ("format", ("table", "json"))}


class _Command:
    """One command's flags, defaults and positional arguments.

    positionals names the required ones, and optional is the name and default of one
    optional positional. remainder names the attribute that takes every argument after
    the positionals, flags included, as argparse.REMAINDER does.
    """

    def __init__(self, summary: str, options: dict | None = None, defaults: dict | None = None,
                 positionals: tuple[str, ...] = ("id",), optional: tuple[str, str] | None = None,
                 remainder: str | None = None):
        self.summary = summary
        self.options = options or {}
        self.defaults = defaults or {}
        self.positionals = positionals
        self.optional = optional
        self.remainder = remainder


_SPECS = {
    "create": _Command("create a container", _CREATE_OPTIONS, _CREATE_DEFAULTS),
    "run": _Command("create and start a container",
                    {**_CREATE_OPTIONS, "-d": ("detach", "flag"), "--detach": ("detach", "flag"),
                     "--keep": ("keep", "flag")},
                    {**_CREATE_DEFAULTS, "detach": False, "keep": False}),
    "start": _Command("start a created container"),
    "pause": _Command("freeze every process of a container"),
    "resume": _Command("thaw a paused container"),
    "state": _Command("print a container's state as JSON"),
    "kill": _Command("send a signal to a container's init (default SIGTERM)",
                     {"-a": ("all", "flag"), "--all": ("all", "flag")}, {"all": False},
                     optional=("signal", "SIGTERM")),
    "delete": _Command("remove a container; --force kills it first if running",
                       {"-f": ("force", "flag"), "--force": ("force", "flag")}, {"force": False}),
    "list": _Command("list containers",
                     {**_FORMAT_OPTIONS, "-q": ("quiet", "flag"), "--quiet": ("quiet", "flag")},
                     {"format": "table", "quiet": False}, positionals=()),
    "ps": _Command("list a container's processes", _FORMAT_OPTIONS, {"format": "table"},
                   remainder="ps_args"),
    "exec": _Command("run a process in a running container", _EXEC_OPTIONS, _EXEC_DEFAULTS,
                     remainder="exec_args"),
    "events": _Command("print a container's stats and OOM events",
                       {"--stats": ("stats", "flag"), "--interval": ("interval", "value")},
                       {"stats": False, "interval": "5s"}),
    "update": _Command("change a container's resource limits", _UPDATE_OPTIONS,
                       {dest: None for dest, _ in _UPDATE_OPTIONS.values()}),
    "features": _Command("print the features of this runtime as JSON", positionals=()),
    "spec": _Command("write a default config.json",
                     {"-b": ("bundle", "value"), "--bundle": ("bundle", "value"),
                      "--rootless": ("rootless_spec", "flag")},
                     {"bundle": ".", "rootless_spec": False}, positionals=()),
}


class UsageError(Exception):
    """A command line that kakoi-runtime cannot parse."""


class Arguments:
    """The parsed command line: one attribute per flag and positional argument."""

    def __init__(self, values: dict):
        self.__dict__.update(values)


def parse(argv: list[str]) -> Arguments | None:
    """Parse the global flags, the command and its flags; None when help or version ran.

    Like runc, global flags come before the command and the command's flags after it,
    in any order with its positional arguments.
    """
    from kakoi.runtime.state import DEFAULT_ROOT

    values = {"root": DEFAULT_ROOT, **_GLOBAL_DEFAULTS, "command": None}
    index = 0
    while index < len(argv) and argv[index].startswith("-") and argv[index] != "-":
        argument = argv[index]
        if argument in ("-h", "--help"):
            _print_help(sys.stdout)
            return None
        if argument in ("-v", "--version"):
            print(f"kakoi-runtime version {__version__}\nspec: {SPEC_VERSION}")
            return None
        if argument == "--":
            index += 1
            break
        index = _parse_option(argv, index, _GLOBAL_OPTIONS, values)
    if index == len(argv):
        return Arguments(values)
    command = argv[index]
    spec = _SPECS.get(command)
    if spec is None:
        raise UsageError(f"unknown command {command!r}: run kakoi-runtime --help for the list")
    values["command"] = command
    if _parse_command(spec, command, argv[index + 1:], values):
        return None
    return Arguments(values)


def _parse_command(spec: _Command, command: str, argv: list[str], values: dict) -> bool:
    """Fill values with the command's flags and positionals; True when help was printed."""
    for name, default in spec.defaults.items():
        values[name] = list(default) if isinstance(default, list) else default
    positionals: list[str] = []
    expected_count = len(spec.positionals) + (1 if spec.optional else 0)
    index = 0
    only_positionals = False
    while index < len(argv):
        argument = argv[index]
        if spec.remainder and len(positionals) == len(spec.positionals) and positionals:
            values[spec.remainder] = argv[index:]
            break
        if only_positionals or not _is_flag(argument):
            positionals.append(argument)
            index += 1
        elif argument == "--":
            only_positionals = True
            index += 1
        elif argument in ("-h", "--help"):
            _print_command_help(command, spec)
            return True
        else:
            index = _parse_option(argv, index, spec.options, values, command)
    if spec.remainder:
        values.setdefault(spec.remainder, [])
    _assign_positionals(spec, command, positionals[:expected_count], values)
    if len(positionals) > expected_count:
        raise UsageError(f"unexpected argument {positionals[expected_count]!r} for {command}: "
                         f"run kakoi-runtime {command} --help for its usage")
    return False


def _is_flag(argument: str) -> bool:
    """Return whether argument is a flag; "-" and negative numbers are values, as in argparse."""
    if not argument.startswith("-") or argument == "-":
        return False
    return not argument[1:].isdigit()


def _assign_positionals(spec: _Command, command: str, positionals: list[str],
                        values: dict) -> None:
    if len(positionals) < len(spec.positionals):
        missing = spec.positionals[len(positionals)]
        description = "a container id" if missing == "id" else missing
        raise UsageError(f"missing {description} for {command}: run kakoi-runtime {command} "
                         "--help for its usage")
    for name, value in zip(spec.positionals, positionals):
        values[name] = value
    if spec.optional:
        name, default = spec.optional
        values[name] = positionals[len(spec.positionals)] \
            if len(positionals) > len(spec.positionals) else default


def _parse_option(argv: list[str], index: int, options: dict, values: dict,
                  command: str | None = None) -> int:
    """Store the flag at argv[index] (with its value) in values; return the next index.

    Accepts --flag value, --flag=value, -x value, -xvalue and clustered short flags
    such as -dt.
    """
    argument = argv[index]
    name, separator, inline = argument.partition("=") if argument.startswith("--") \
        else (argument[:2], "", argument[2:])
    has_inline = bool(separator) or (not argument.startswith("--") and bool(inline))
    if name not in options:
        where = f"kakoi-runtime {command}" if command else "kakoi-runtime"
        raise UsageError(f"unknown flag {name} for {where}: run {where} --help for its flags")
    dest, kind = options[name]
    if kind == "flag":
        if separator:
            raise UsageError(f"flag {name} takes no value: remove {argument[len(name):]!r}")
        values[dest] = True
        if inline:  # a cluster of short flags: -dt
            return _parse_option(argv[:index] + ["-" + inline] + argv[index + 1:], index,
                                 options, values, command)
        return index + 1
    if has_inline:
        value = inline if separator else inline.removeprefix("=")
        index += 1
    elif index + 1 < len(argv):
        value = argv[index + 1]
        index += 2
    else:
        raise UsageError(f"missing value for flag {name}: write {name} VALUE")
    _store(name, dest, kind, value, values)
    return index


def _store(name: str, dest: str, kind, value: str, values: dict) -> None:
    if isinstance(kind, tuple):
        if value not in kind:
            raise UsageError(f"invalid {name} {value!r}: use one of {', '.join(kind)}")
    elif kind in ("int", "append-int"):
        try:
            value = int(value)
        except ValueError:
            raise UsageError(f"invalid {name} {value!r}: use an integer")
    if kind in ("append", "append-int"):
        values[dest] = values.get(dest) or []
        values[dest].append(value)
    else:
        values[dest] = value


def _print_help(stream) -> None:
    from kakoi.runtime.state import DEFAULT_ROOT

    lines = ["usage: kakoi-runtime [global flags] COMMAND [flags] [arguments]",
             "", "Run OCI bundles; a runc-compatible command line.", "", "commands:"]
    lines += [f"  {name:<10}{spec.summary}" for name, spec in _SPECS.items()]
    lines += ["", "global flags:",
              f"  --root DIR          directory of container state (default {DEFAULT_ROOT})",
              "  --log FILE          write errors and debug output to this file",
              "  --log-format FMT    format of the --log file: text (default) or json",
              "  --debug             log debug output",
              "  --systemd-cgroup    manage cgroups through systemd (not supported)",
              "  --rootless MODE     rootless mode: auto (default) or false",
              "  -v, --version       print the version",
              "  -h, --help          print this help"]
    print("\n".join(lines), file=stream)


def _print_command_help(command: str, spec: _Command) -> None:
    arguments = " ".join(f"<{name}>" for name in spec.positionals)
    if spec.optional:
        arguments += f" [{spec.optional[0]}]"
    if spec.remainder:
        arguments += " [arguments...]"
    print(f"usage: kakoi-runtime {command} [flags] {arguments}".rstrip())
    print(f"\n{spec.summary}\n\nflags:")
    by_dest: dict[str, list[str]] = {}
    for flag, (dest, kind) in spec.options.items():
        by_dest.setdefault(dest, []).append(flag)
    for dest, flags in by_dest.items():
        kind = spec.options[flags[0]][1]
        value = "" if kind == "flag" else " VALUE"
        print(f"  {', '.join(flags)}{value}")


def launch() -> None:
    """Run the command line, then leave without the interpreter's teardown.

    Tearing down the modules costs about 2 ms, a sixth of a `start` or `delete`, and
    kakoi-runtime leaves nothing for it to do: no thread, no atexit handler that matters,
    and the two standard streams, flushed here.
    """
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        code = code or 1  # the reader went away; a clean exit would report the same
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse(sys.argv[1:] if argv is None else argv)
    except UsageError as error:
        print(f"kakoi-runtime: {error}", file=sys.stderr)
        return 1
    if args is None:
        return 0
    if not args.command:
        _print_help(sys.stderr)
        return 1
    if args.debug:
        from kakoi import log
        log.enable_debug()
    try:
        _check_globals(args)
        return _COMMANDS[args.command](args) or 0
    except KakoiError as error:
        _report(args, str(error))
        return 1
    except KeyboardInterrupt:
        return 130


def _check_globals(args) -> None:
    from kakoi.errors import NotSupportedError

    if args.systemd_cgroup:
        raise NotSupportedError("--systemd-cgroup is not supported: kakoi-runtime manages "
                                "cgroups through cgroupfs; configure the engine for cgroupfs")
    if args.rootless == "true":
        raise NotSupportedError("rootless mode is not supported: run kakoi-runtime as root")


def _report(args, message: str) -> None:
    """Print the error, and log it to --log in the format the engine reads."""
    print(f"kakoi-runtime: {message}", file=sys.stderr)
    if not args.log:
        return
    from kakoi.runtime.state import now

    try:
        with open(args.log, "a") as file:
            if args.log_format == "json":
                from kakoi import jsontext

                file.write(jsontext.dumps({"level": "error", "msg": message, "time": now()})
                           + "\n")
            else:
                file.write(f"time=\"{now()}\" level=error msg=\"{message}\"\n")
    except OSError:
        pass


def _create(args) -> int:
    from kakoi.runtime import lifecycle

    container = lifecycle.create(args.root, args.id, args.bundle, pid_file=args.pid_file,
                                 console_socket=args.console_socket, no_pivot=args.no_pivot,
                                 no_new_keyring=args.no_new_keyring,
                                 preserve_fds=args.preserve_fds)
    if container.console_fd is not None:
        os.close(container.console_fd)
    return 0


def _run(args) -> int:
    from kakoi.runtime import attach, lifecycle

    forwarder = attach.SignalForwarder()
    try:
        container = lifecycle.create(args.root, args.id, args.bundle, pid_file=args.pid_file,
                                     console_socket=args.console_socket,
                                     no_pivot=args.no_pivot, no_new_keyring=args.no_new_keyring,
                                     preserve_fds=args.preserve_fds,
                                     allow_terminal_relay=not args.detach)
        forwarder.target(container.pid)
        try:
            lifecycle.start(args.root, args.id)
        except BaseException:
            lifecycle.delete(args.root, args.id, force=True)  # runc run leaves nothing
            raise
        if args.detach:
            return 0
        status = attach.wait(container.pid, container.console_fd, interactive=True)
        if not args.keep:
            lifecycle.delete(args.root, args.id, force=True)
        return attach.exit_code(status)
    finally:
        forwarder.restore()


def _start(args) -> int:
    from kakoi.runtime import lifecycle

    lifecycle.start(args.root, args.id)
    return 0


def _state(args) -> int:
    from kakoi import jsontext
    from kakoi.runtime import lifecycle

    print(jsontext.dumps(lifecycle.describe(args.root, args.id), indent=2))
    return 0


def _kill(args) -> int:
    from kakoi.runtime import lifecycle

    lifecycle.kill(args.root, args.id, lifecycle.parse_signal(args.signal), args.all)
    return 0


def _delete(args) -> int:
    from kakoi.runtime import lifecycle

    lifecycle.delete(args.root, args.id, force=args.force)
    return 0


def _list(args) -> int:
    from kakoi import jsontext
    from kakoi.runtime import lifecycle

    rows = lifecycle.list_all(args.root)
    if args.quiet:
        for row in rows:
            print(row["id"])
    elif args.format == "json":
        print(jsontext.dumps(rows))
    else:
        print(f"{'ID':<20}{'PID':<10}{'STATUS':<10}{'BUNDLE':<40}{'CREATED':<32}OWNER")
        for row in rows:
            print(f"{row['id']:<20}{row['pid']:<10}{row['status']:<10}{row['bundle']:<40}"
                  f"{row['created']:<32}root")
    return 0


def _ps(args) -> int:
    import json
    import subprocess

    from kakoi.runtime import lifecycle

    pids = lifecycle.pids(args.root, args.id)
    if args.format == "json":
        print(json.dumps(pids))
        return 0
    ps_args = [arg for arg in args.ps_args if arg != "--"] or ["-ef"]
    output = subprocess.run(["ps", *ps_args], capture_output=True, text=True, check=True).stdout
    lines = output.splitlines()
    if not lines:
        return 0
    header = lines[0].split()
    if "PID" not in header:
        raise KakoiError("ps output has no PID column: give ps options that include it")
    column = header.index("PID")
    print(lines[0])
    for line in lines[1:]:
        fields = line.split()
        if len(fields) > column and fields[column].isdigit() and int(fields[column]) in pids:
            print(line)
    return 0


def _exec(args) -> int:
    from kakoi.runtime import attach, execute, lifecycle
    from kakoi.runtime import state as states

    state = states.load(args.root, args.id)
    cgroup = lifecycle._open_cgroup(state)
    status = states.status(state, cgroup)
    if status not in ("created", "running"):
        raise states.InvalidState(f"cannot exec in container {args.id}: it is {status}")
    if args.process:
        process = execute.load_process(args.process)
    else:
        command = args.exec_args[1:] if args.exec_args[:1] == ["--"] else args.exec_args
        process = execute.process_from_args(
            state["spec"]["process"], command, env=args.env, cwd=args.cwd,
            user=args.user, additional_gids=args.additional_gids, caps=args.cap,
            tty=args.tty, no_new_privs=args.no_new_privs)
    if process.get("terminal") and args.detach and not args.console_socket:
        raise KakoiError("a detached exec with a terminal needs --console-socket")

    forwarder = attach.SignalForwarder()
    try:
        child = execute.spawn(state, process, cgroup=cgroup, preserve_fds=args.preserve_fds)
        forwarder.target(child.pid)
        if child.console_fd is not None and args.console_socket:
            lifecycle._send_console(args.console_socket, child.console_fd)
            os.close(child.console_fd)
            child.console_fd = None
        child.start()
        if args.pid_file:
            lifecycle._write_pid_file(args.pid_file, child.pid)
        if args.detach:
            return 0
        status = attach.wait(child.pid, child.console_fd, interactive=True)
        return attach.exit_code(status)
    finally:
        forwarder.restore()


def _pause(args) -> int:
    from kakoi.runtime import lifecycle

    lifecycle.pause(args.root, args.id)
    return 0


def _resume(args) -> int:
    from kakoi.runtime import lifecycle

    lifecycle.resume(args.root, args.id)
    return 0


def _events(args) -> int:
    import json
    import time

    from kakoi.runtime import lifecycle

    if args.stats:
        print(json.dumps(lifecycle.stats(args.root, args.id)))
        return 0
    interval = _parse_duration(args.interval)
    oom_seen = 0
    while True:
        try:
            event = lifecycle.stats(args.root, args.id)
        except KakoiError:
            return 0  # the container stopped or was deleted: the stream ends
        print(json.dumps(event), flush=True)
        oom_count = lifecycle.oom_count(args.root, args.id)
        if oom_count > oom_seen:
            oom_seen = oom_count
            print(json.dumps({"type": "oom", "id": args.id}), flush=True)
        time.sleep(interval)


def _parse_duration(text: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for suffix in ("ms", "s", "m", "h"):
        if text.endswith(suffix) and text[: -len(suffix)].replace(".", "", 1).isdigit():
            value = float(text[: -len(suffix)]) * units[suffix]
            if value > 0:
                return value
    raise KakoiError(f"invalid --interval {text!r}: use a duration such as 5s or 500ms")


def _update(args) -> int:
    from kakoi.runtime import lifecycle

    if args.resources:
        text = sys.stdin.read() if args.resources == "-" else _read_file(args.resources)
        resources = lifecycle.load_resources(text)
    else:
        resources = _resources_from_flags(args)
    lifecycle.update(args.root, args.id, resources)
    return 0


def _read_file(path: str) -> str:
    try:
        with open(path) as file:
            return file.read()
    except OSError as error:
        raise KakoiError(f"cannot read {path}: {error.strerror}")


def _resources_from_flags(args) -> dict:
    from kakoi.engine.options import parse_size

    def number(flag: str, value: str | None) -> int | None:
        if value is None:
            return None
        try:
            return int(value)
        except ValueError:
            raise KakoiError(f"invalid --{flag} {value!r}: use an integer")

    def size(flag: str, value: str | None) -> int | None:
        if value is None:
            return None
        return -1 if value.strip() == "-1" else parse_size(value, f"--{flag}")

    unsupported = [flag for flag in ("kernel_memory", "kernel_memory_tcp", "l3_cache_schema",
                                     "mem_bw_schema") if getattr(args, flag) is not None]
    if unsupported:
        raise KakoiError(f"--{unsupported[0].replace('_', '-')} is not supported by "
                         "kakoi-runtime")
    resources: dict = {}
    memory = {"limit": size("memory", args.memory), "swap": size("memory-swap", args.memory_swap),
              "reservation": size("memory-reservation", args.memory_reservation)}
    cpu = {"shares": number("cpu-shares", args.cpu_shares),
           "quota": number("cpu-quota", args.cpu_quota),
           "period": number("cpu-period", args.cpu_period), "cpus": args.cpuset_cpus,
           "mems": args.cpuset_mems,
           "realtimePeriod": number("cpu-rt-period", args.cpu_rt_period),
           "realtimeRuntime": number("cpu-rt-runtime", args.cpu_rt_runtime)}
    for key, values in (("memory", memory), ("cpu", cpu)):
        values = {name: value for name, value in values.items() if value is not None}
        if values:
            resources[key] = values
    if args.pids_limit is not None:
        resources["pids"] = {"limit": number("pids-limit", args.pids_limit)}
    if args.blkio_weight is not None:
        resources["blockIO"] = {"weight": number("blkio-weight", args.blkio_weight)}
    if not resources:
        raise KakoiError("update needs --resources or at least one limit flag")
    return resources


def _features(args) -> int:
    import json

    from kakoi.runtime.features import features

    print(json.dumps(features(), indent=2))
    return 0


def _spec(args) -> int:
    import json

    from kakoi.runtime.features import default_spec

    path = os.path.join(args.bundle, "config.json")
    if os.path.exists(path):
        raise KakoiError(f"{path} already exists: remove it first")
    try:
        with open(path, "w") as file:
            json.dump(default_spec(rootless=args.rootless_spec), file, indent=2)
            file.write("\n")
    except OSError as error:
        raise KakoiError(f"cannot write {path}: {error.strerror}")
    return 0


_COMMANDS = {
    "create": _create, "run": _run, "start": _start, "state": _state, "kill": _kill,
    "delete": _delete, "list": _list, "ps": _ps, "exec": _exec, "pause": _pause,
    "resume": _resume, "events": _events, "update": _update, "features": _features,
    "spec": _spec,
}


if __name__ == "__main__":
    launch()
