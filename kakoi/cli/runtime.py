"""`kakoi-runtime`: runc's command line over kakoi's runtime, for engines that drive runc.

The commands, flags and outputs follow runc 1.1, so that Podman (through conmon) and
containerd's shim can use kakoi-runtime in runc's place.
"""

import argparse
import json
import os
import sys

from kakoi import __version__
from kakoi.cli.lazy import HelpFormatter, OneCommand, split_command
from kakoi.errors import KakoiError

SPEC_VERSION = "1.0.2"


class ArgumentParser(argparse.ArgumentParser):
    """Exit with status 1 on a bad flag, as runc does."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(1, f"kakoi-runtime: {message}\n")


_GLOBAL_FLAGS_WITH_VALUES = {"--root", "--log", "--log-format", "--criu", "--rootless"}


def build_parser(command: str | None = None) -> ArgumentParser:
    """Return the parser; with command, one that builds only that command's parser."""
    from kakoi.runtime.state import DEFAULT_ROOT

    parser = ArgumentParser(prog="kakoi-runtime",
                            description="Run OCI bundles; a runc-compatible command line.")
    parser.add_argument("-v", "--version", action="version",
                        version=f"kakoi-runtime version {__version__}\nspec: {SPEC_VERSION}")
    parser.add_argument("--root", default=DEFAULT_ROOT,
                        help=f"directory of container state (default {DEFAULT_ROOT})")
    parser.add_argument("--log", help="write errors and debug output to this file")
    parser.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="format of the --log file")
    parser.add_argument("--debug", action="store_true", help="log debug output")
    parser.add_argument("--systemd-cgroup", action="store_true",
                        help="manage cgroups through systemd (not supported)")
    parser.add_argument("--criu", help=argparse.SUPPRESS)
    parser.add_argument("--rootless", default="auto", help="rootless mode: auto or false")
    if command is None:
        commands = parser.add_subparsers(dest="command", metavar="COMMAND",
                                         parser_class=ArgumentParser)
    else:
        commands = OneCommand(command, "kakoi-runtime", ArgumentParser)
        parser.add_argument("command", choices=[command])
        parser.add_argument("arguments", nargs=argparse.REMAINDER)
    _add_create_flags(commands.add_parser("create", help="create a container"))
    run = commands.add_parser("run", help="create and start a container")
    _add_create_flags(run)
    run.add_argument("-d", "--detach", action="store_true", help="do not wait for it to exit")
    run.add_argument("--keep", action="store_true", help="keep the container after it exits")
    for name, text in (("start", "start a created container"),
                       ("pause", "freeze every process of a container"),
                       ("resume", "thaw a paused container")):
        commands.add_parser(name, help=text).add_argument("id")
    commands.add_parser("state", help="print a container's state as JSON").add_argument("id")
    kill = commands.add_parser("kill", help="send a signal to a container's init")
    kill.add_argument("-a", "--all", action="store_true", help="signal every process")
    kill.add_argument("id")
    kill.add_argument("signal", nargs="?", default="SIGTERM")
    delete = commands.add_parser("delete", help="remove a container")
    delete.add_argument("-f", "--force", action="store_true", help="kill it first if running")
    delete.add_argument("id")
    listing = commands.add_parser("list", help="list containers")
    listing.add_argument("-f", "--format", choices=("table", "json"), default="table")
    listing.add_argument("-q", "--quiet", action="store_true", help="print ids only")
    ps = commands.add_parser("ps", help="list a container's processes")
    ps.add_argument("-f", "--format", choices=("table", "json"), default="table")
    ps.add_argument("id")
    ps.add_argument("ps_args", nargs=argparse.REMAINDER)
    _add_exec_parser(commands)
    events = commands.add_parser("events", help="print a container's stats and OOM events")
    events.add_argument("--stats", action="store_true", help="print stats once and exit")
    events.add_argument("--interval", default="5s", help="time between stats (default 5s)")
    events.add_argument("id")
    _add_update_parser(commands)
    commands.add_parser("features", help="print the features of this runtime as JSON")
    spec = commands.add_parser("spec", help="write a default config.json")
    spec.add_argument("-b", "--bundle", default=".", help="bundle directory")
    # Its own dest: the global --rootless fills args.rootless first, and argparse does
    # not overwrite an attribute that is already there with this flag's default.
    spec.add_argument("--rootless", action="store_true", dest="rootless_spec",
                      help="a spec for rootless use")
    if command is not None:
        parser.set_defaults(subparser=commands.parser)
    return parser


def parse(argv: list[str]):
    """Parse the global flags, then the command's own flags with that command's parser.

    Building the parsers of all fifteen commands costs about 10 ms, a fifth of a
    container start, so only the one being run is built.
    """
    index = split_command(argv, _GLOBAL_FLAGS_WITH_VALUES)
    command = argv[index] if index is not None else None
    parser = build_parser(command) if command in _COMMANDS else None
    if parser is None:
        return build_parser().parse_args(argv)  # help, version, or an unknown command
    args = parser.parse_args(argv)
    args.subparser.parse_args(args.arguments, namespace=args)
    args.command = command
    return args


def _add_create_flags(parser) -> None:
    parser.add_argument("-b", "--bundle", default=".", help="bundle directory")
    parser.add_argument("--pid-file", help="write the init's pid to this file")
    parser.add_argument("--console-socket", help="unix socket that receives the pty master")
    parser.add_argument("--no-pivot", action="store_true",
                        help="enter the rootfs by move and chroot instead of pivot_root")
    parser.add_argument("--no-new-keyring", action="store_true",
                        help="keep the caller's session keyring")
    parser.add_argument("--preserve-fds", type=int, default=0,
                        help="pass this many extra fds, from 3 on, to the container")
    parser.add_argument("id")


def _add_exec_parser(commands) -> None:
    exec_ = commands.add_parser("exec", help="run a process in a running container")
    exec_.add_argument("-p", "--process", help="process.json with the process to run")
    exec_.add_argument("-t", "--tty", action="store_true", help="allocate a terminal")
    exec_.add_argument("--console-socket", help="unix socket that receives the pty master")
    exec_.add_argument("-d", "--detach", action="store_true", help="do not wait for it")
    exec_.add_argument("--pid-file", help="write the process's pid to this file")
    exec_.add_argument("-e", "--env", action="append", default=[], help="add KEY=VALUE")
    exec_.add_argument("--cwd", help="working directory in the container")
    exec_.add_argument("-u", "--user", help="uid[:gid]")
    exec_.add_argument("-g", "--additional-gids", action="append", type=int, default=[])
    exec_.add_argument("-c", "--cap", action="append", default=[], help="add a capability")
    exec_.add_argument("--no-new-privs", action="store_true", help="set no_new_privs")
    exec_.add_argument("--preserve-fds", type=int, default=0)
    exec_.add_argument("--apparmor", help=argparse.SUPPRESS)
    exec_.add_argument("--process-label", help=argparse.SUPPRESS)
    exec_.add_argument("id")
    exec_.add_argument("exec_args", nargs=argparse.REMAINDER, metavar="COMMAND",
                       help="command and its arguments, unless --process is given")


def _add_update_parser(commands) -> None:
    update = commands.add_parser("update", help="change a container's resource limits")
    update.add_argument("-r", "--resources", help="linux.resources JSON file, or - for stdin")
    for flag in ("memory", "memory-swap", "memory-reservation", "kernel-memory",
                 "kernel-memory-tcp", "cpu-shares", "cpu-quota", "cpu-period", "cpuset-cpus",
                 "cpuset-mems", "pids-limit", "blkio-weight", "cpu-rt-period",
                 "cpu-rt-runtime", "l3-cache-schema", "mem-bw-schema"):
        update.add_argument(f"--{flag}")
    update.add_argument("id")


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if not args.command:
        build_parser().print_help(sys.stderr)
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
                file.write(json.dumps({"level": "error", "msg": message, "time": now()}) + "\n")
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
    from kakoi.runtime import lifecycle

    print(json.dumps(lifecycle.describe(args.root, args.id), indent=2))
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
    from kakoi.runtime import lifecycle

    rows = lifecycle.list_all(args.root)
    if args.quiet:
        for row in rows:
            print(row["id"])
    elif args.format == "json":
        print(json.dumps(rows))
    else:
        print(f"{'ID':<20}{'PID':<10}{'STATUS':<10}{'BUNDLE':<40}{'CREATED':<32}OWNER")
        for row in rows:
            print(f"{row['id']:<20}{row['pid']:<10}{row['status']:<10}{row['bundle']:<40}"
                  f"{row['created']:<32}root")
    return 0


def _ps(args) -> int:
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
    from kakoi.runtime.features import features

    print(json.dumps(features(), indent=2))
    return 0


def _spec(args) -> int:
    from kakoi.runtime.features import default_spec

    path = os.path.join(args.bundle, "config.json")
    if os.path.exists(path):
        raise KakoiError(f"{path} already exists: remove it first")
    with open(path, "w") as file:
        json.dump(default_spec(rootless=args.rootless_spec), file, indent=2)
        file.write("\n")
    return 0


_COMMANDS = {
    "create": _create, "run": _run, "start": _start, "state": _state, "kill": _kill,
    "delete": _delete, "list": _list, "ps": _ps, "exec": _exec, "pause": _pause,
    "resume": _resume, "events": _events, "update": _update, "features": _features,
    "spec": _spec,
}


if __name__ == "__main__":
    sys.exit(main())
