"""`kakoi run`, `ps` and `rm`: the container commands."""

import argparse
import os


def register(subparsers) -> None:
    # add_help=False because -h is --hostname, as in docker run; --help still prints help.
    run = subparsers.add_parser("run", help="run a command in a new container", add_help=False,
                                description="Run a command in a new container.")
    run.add_argument("--help", action="help", help="show this help and exit")
    run.add_argument("image", help="image name or id")
    run.add_argument("command", nargs=argparse.REMAINDER, help="command and its arguments")
    run.add_argument("--rm", dest="remove", action="store_true",
                     help="remove the container when it exits")
    run.add_argument("--name", help="name of the container")
    run.add_argument("-e", "--env", action="append", default=[], help="set KEY=VALUE")
    run.add_argument("--env-file", action="append", default=[], dest="env_files",
                     help="read KEY=VALUE lines from a file")
    run.add_argument("-w", "--workdir", help="working directory inside the container")
    run.add_argument("-u", "--user", help="user[:group], by name or number")
    run.add_argument("-h", "--hostname", help="hostname of the container")
    run.add_argument("--entrypoint", help="override the image's entrypoint")
    run.add_argument("-v", "--volume", action="append", default=[], dest="volumes",
                     help="bind mount /host/path:/container/path[:ro]")
    run.add_argument("--tmpfs", action="append", default=[], help="mount a tmpfs: /path[:opts]")
    run.add_argument("--read-only", action="store_true", help="mount the root read-only")
    run.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    run.add_argument("-t", "--tty", action="store_true", help="allocate a terminal")
    run.add_argument("-m", "--memory", help="memory limit in bytes, or with a unit: 50m, 1g")
    run.add_argument("--memory-swap", help="memory plus swap limit; -1 for unlimited swap")
    run.add_argument("--cpus", help="number of CPUs, such as 0.5")
    run.add_argument("--cpu-shares", type=int, help="relative CPU weight (default 1024)")
    run.add_argument("--pids-limit", type=int, help="maximum number of processes (-1: none)")
    run.add_argument("--ulimit", action="append", default=[], dest="ulimits",
                     help="resource limit name=soft[:hard], such as nofile=1024:2048")
    run.add_argument("--cap-add", action="append", default=[], help="add a capability")
    run.add_argument("--cap-drop", action="append", default=[], help="drop a capability")
    run.add_argument("--privileged", action="store_true",
                     help="give every capability in the host's bounding set, without masks")
    run.add_argument("--security-opt", action="append", default=[],
                     help="no-new-privileges, seccomp=unconfined or apparmor=unconfined")
    run.add_argument("--network", "--net", default="none", help="none (default) or host")
    run.add_argument("--pull", default="missing", choices=("missing", "always", "never"),
                     help="pull the image before running: missing (default), always or never")
    run.add_argument("--cgroup-parent", default=os.environ.get("KAKOI_CGROUP_PARENT", "kakoi"),
                     help="cgroup below which the container's cgroup is made, relative to "
                          "each hierarchy's root (default: $KAKOI_CGROUP_PARENT or kakoi)")
    run.add_argument("-d", "--detach", action="store_true", help=argparse.SUPPRESS)
    run.set_defaults(func=_run)

    ps = subparsers.add_parser("ps", help="list containers")
    ps.add_argument("-a", "--all", action="store_true", help="show exited containers too")
    ps.add_argument("-q", "--quiet", action="store_true", help="print ids only")
    ps.add_argument("--no-trunc", action="store_true", help="print full container ids")
    ps.set_defaults(func=_ps)

    rm = subparsers.add_parser("rm", help="remove containers")
    rm.add_argument("containers", nargs="+", metavar="CONTAINER")
    rm.add_argument("-f", "--force", action="store_true", help="kill a running container first")
    rm.set_defaults(func=_rm)


def _run(args) -> int:
    from kakoi.engine.config import RunOptions
    from kakoi.engine.run import run
    from kakoi.errors import NotSupportedError

    if args.detach:
        raise NotSupportedError("detached containers (-d) are not supported yet: run in the "
                                "foreground")
    command = args.command
    if command and command[0] == "--":
        command = command[1:]
    options = RunOptions(
        image=args.image, command=command, name=args.name, remove=args.remove, env=args.env,
        env_files=args.env_files, workdir=args.workdir, user=args.user, hostname=args.hostname,
        entrypoint=args.entrypoint, volumes=args.volumes, tmpfs=args.tmpfs,
        read_only=args.read_only, interactive=args.interactive, tty=args.tty,
        memory=args.memory, memory_swap=args.memory_swap, cpus=args.cpus,
        cpu_shares=args.cpu_shares, pids_limit=args.pids_limit, ulimits=args.ulimits,
        cap_add=args.cap_add, cap_drop=args.cap_drop, privileged=args.privileged,
        security_opt=args.security_opt, network=args.network,
        cgroup_parent=args.cgroup_parent, pull=args.pull)
    return run(args.root, options)


def _ps(args) -> int:
    from kakoi.cli.images import humanize_created
    from kakoi.engine import containers

    rows = containers.list_containers(args.root, include_exited=args.all)
    if args.quiet:
        for row in rows:
            print(row["Id"] if args.no_trunc else row["Id"][:12])
        return 0
    print(f"{'CONTAINER ID':<14}{'IMAGE':<22}{'COMMAND':<24}{'CREATED':<25}{'STATUS':<18}NAMES")
    for row in rows:
        command = " ".join(row.get("Command", []))
        if len(command) > 20:
            command = command[:19] + "…"
        print(f"{row['Id'][:12]:<14}{row['ImageName'][:20]:<22}{json_quote(command):<24}"
              f"{humanize_created(row['Created']):<25}{row['StatusText']:<18}{row['Name']}")
    return 0


def json_quote(text: str) -> str:
    return '"' + text + '"'


def _rm(args) -> int:
    from kakoi.engine import containers
    import sys

    failed = 0
    for name in args.containers:
        try:
            containers.remove(args.root, name, force=args.force)
            print(name)
        except Exception as error:
            from kakoi.errors import KakoiError
            if not isinstance(error, KakoiError):
                raise
            print(f"kakoi: {error}", file=sys.stderr)
            failed = 1
    return failed
