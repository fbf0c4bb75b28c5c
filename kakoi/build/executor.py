"""The build executor: a parsed Dockerfile and a context become an image in the store.

Each stage starts from scratch, an image or an earlier stage, and keeps its state as an image
config, a list of layers and a history. RUN runs in a real container (the stage's layers as
overlay lowerdirs plus a fresh upper dir, no network, the default seccomp profile) and its
upper dir becomes the new layer. COPY and ADD write into a fresh directory that becomes the
layer, with no container. Only the stages that the target needs are built.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import stat
import sys
import time

from kakoi.build import cache as caches
from kakoi.build.context import Context, hash_tree
from kakoi.errors import BuildError, KakoiError

DEFAULT_SHELL = ["/bin/sh", "-c"]
# Build args that every build accepts without an ARG line; like Docker, they reach RUN but
# stay out of the history and the cache key.
PROXY_ARGS = {"HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY",
              "ftp_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"}
# Mount points that the runtime creates in the rootfs of a RUN container when the image lacks
# them; they are removed from the upper dir again when they are still empty.
_MOUNT_POINTS = ["etc/hosts", "etc/hostname", "etc/resolv.conf", "proc", "sys", "dev", "etc"]
_EXPANDED = {"ADD", "COPY", "ENV", "EXPOSE", "LABEL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR"}


class BuildOptions:
    """The `kakoi build` flags."""

    def __init__(self, dockerfile: str, filename: str = "Dockerfile",
                 context: str | None = None, tags: list[str] | None = None,
                 build_args: dict[str, str] | None = None, target: str | None = None,
                 no_cache: bool = False, pull: bool = False,
                 labels: dict[str, str] | None = None, quiet: bool = False,
                 cgroup_parent: str = "kakoi", epoch: int | None = None):
        self.dockerfile = dockerfile
        self.filename = filename
        self.context = context
        self.tags = tags or []
        self.build_args = build_args or {}
        self.target = target
        self.no_cache = no_cache
        self.pull = pull
        self.labels = labels or {}
        self.quiet = quiet
        self.cgroup_parent = cgroup_parent
        self.epoch = epoch


class StageState:
    """What a stage has built so far."""

    def __init__(self, name: str | None, image: dict, layers: list[dict], key: str):
        self.name = name
        self.image = image          # the whole image config: architecture, os, config, history
        self.layers = layers        # layer records as cache.commit_layer returns them
        self.key = key              # cache key of the last step
        self.args: dict[str, str] = {}
        self.cmd_set = False  # whether this stage set CMD, which ENTRYPOINT then keeps

    @property
    def config(self) -> dict:
        return self.image.setdefault("config", {})

    def env(self) -> dict[str, str]:
        return dict(entry.partition("=")[::2] for entry in self.config.get("Env") or [])

    def snapshot(self) -> dict:
        return {"image": self.image, "layers": self.layers}


class Builder:
    """Runs one build; `build()` returns the new image id."""

    def __init__(self, root: str, options: BuildOptions):
        from kakoi.image.store import Store

        self.root = root
        self.options = options
        self.store = Store(root)
        self.cache = caches.BuildCache(root, self.store)
        self.context = Context.open(options.context)
        self.stages: dict[int, StageState] = {}
        self.used_args: set[str] = set()
        self.step = 0
        self.total = 0
        self.work = None

    # Output

    def say(self, text: str) -> None:
        if not self.options.quiet:
            print(text, flush=True)

    def error(self, instruction, message: str) -> BuildError:
        return BuildError(message, instruction.line, self.options.filename)

    # The build

    def build(self) -> str:
        from kakoi.build.parser import parse

        dockerfile = parse(self.options.dockerfile, self.options.filename)
        if not dockerfile.stages:
            raise BuildError(f"{self.options.filename}: no FROM instruction: a Dockerfile "
                             "starts with FROM (after ARG lines)")
        self.global_args = self._global_args(dockerfile)
        target = self._target_index(dockerfile)
        needed = self._needed(dockerfile, target)
        self.total = sum(1 + len(dockerfile.stages[i].instructions) for i in needed)
        self.store.ensure_layout()
        try:
            for index in needed:
                self.stages[index] = self._build_stage(dockerfile, dockerfile.stages[index])
            return self._commit(self.stages[target])
        finally:
            if self.work is not None:
                import shutil

                shutil.rmtree(self.work, ignore_errors=True)

    def _work_dir(self) -> str:
        """Return the build's scratch directory, made on first use: cache hits need none."""
        if self.work is None:
            import tempfile

            self.work = tempfile.mkdtemp(dir=self.store._tmp, prefix="build-")
        return self.work

    def _global_args(self, dockerfile) -> dict[str, str]:
        from kakoi.build.parser import expand, parse_key_values

        values: dict[str, str] = {}
        for instruction in dockerfile.global_args:
            for key, value in parse_key_values(instruction):
                if key in self.options.build_args:
                    value = self.options.build_args[key]
                    self.used_args.add(key)
                elif value is not None:
                    value = expand(value, values)
                if value is not None:
                    values[key] = value
                else:
                    values.setdefault(key, None)
        return values

    def _target_index(self, dockerfile) -> int:
        target = self.options.target
        if target is None:
            return len(dockerfile.stages) - 1
        for stage in dockerfile.stages:
            if stage.name == target.lower():
                return stage.index
        raise BuildError(f"target stage {target!r} not found in {self.options.filename}: use "
                         "the name of a FROM ... AS NAME line")

    def _stage_ref(self, dockerfile, text: str, before: int) -> int | None:
        for stage in dockerfile.stages[:before]:
            if stage.name is not None and stage.name == text.lower():
                return stage.index
        if text.isdigit() and int(text) < before:
            return int(text)
        return None

    def _needed(self, dockerfile, target: int) -> list[int]:
        """Return the stages that the target depends on through FROM and COPY --from."""
        from kakoi.build.parser import expand

        needed: set[int] = set()
        pending = [target]
        while pending:
            index = pending.pop()
            if index in needed:
                continue
            needed.add(index)
            stage = dockerfile.stages[index]
            base = expand(stage.base, {k: v for k, v in self.global_args.items()
                                       if v is not None})
            refs = [base]
            for instruction in stage.instructions:
                source = instruction.flags.get("from")
                if instruction.keyword in ("COPY", "ADD") and source:
                    refs.append(source if isinstance(source, str) else source[-1])
            for ref in refs:
                found = self._stage_ref(dockerfile, ref, index)
                if found is not None:
                    pending.append(found)
        return sorted(needed)

    # Stages

    def _build_stage(self, dockerfile, stage) -> StageState:
        from kakoi.build.parser import expand

        args = {k: v for k, v in self.global_args.items() if v is not None}
        base = expand(stage.base, args)
        self._check_platform(stage, expand(stage.platform, args) if stage.platform else None)
        self._announce(f"FROM {base}" + (f" AS {stage.name}" if stage.name else ""))
        state = self._base_state(dockerfile, stage, base)
        triggers = list(state.config.get("OnBuild") or [])
        if triggers:
            state.config["OnBuild"] = None
            for instruction in self._triggers(triggers, stage):
                self._execute(dockerfile, state, instruction)
        for instruction in stage.instructions:
            self._announce(instruction.text.strip().splitlines()[0] if instruction.text
                           else instruction.keyword)
            self._execute(dockerfile, state, instruction)
        return state

    def _announce(self, text: str) -> None:
        self.step += 1
        self.say(f"STEP {self.step}/{self.total}: {text}")

    def _base_state(self, dockerfile, stage, base: str) -> StageState:
        from kakoi.errors import ImageNotFound, InvalidArgument

        found = self._stage_ref(dockerfile, base, stage.index)
        if found is not None:
            source = self.stages[found]
            image = json.loads(json.dumps(source.image))
            return StageState(stage.name, image, list(source.layers), source.key)
        if base == "scratch":
            image = {"architecture": _architecture(), "os": "linux",
                     "config": {}, "rootfs": {"type": "layers", "diff_ids": []}, "history": []}
            return StageState(stage.name, image, [], caches.step_key("", "scratch"))
        try:
            record = self._stored_image(base)
            if record is None:
                from kakoi.engine.run import resolve_image

                record = resolve_image(self.store, base,
                                       "always" if self.options.pull else "missing")
        except (ImageNotFound, InvalidArgument) as error:
            raise BuildError(f"{self.options.filename}:{stage.line}: base image {base!r}: "
                             f"{error}") from None
        except KakoiError as error:
            raise BuildError(f"{self.options.filename}:{stage.line}: cannot pull base image "
                             f"{base!r}: {error}") from None
        try:
            record = self.store.ensure_unpacked(record)
        except KakoiError as error:
            raise BuildError(f"{self.options.filename}:{stage.line}: cannot unpack base image "
                             f"{base!r}: {error}") from None
        image = self.store.config(record)
        image.setdefault("history", [])
        layers = [{"digest": layer.digest, "media_type": layer.media_type, "size": layer.size,
                   "diff_id": layer.diff_id, "chain_id": chain}
                  for layer, chain in zip(record.layers, record.chain_ids)]
        return StageState(stage.name, image, layers, caches.step_key("", record.id))

    def _stored_image(self, name: str):
        """Return the stored image `name` when no pull is due, else None.

        resolve_image does the same lookup first, but importing the engine for it costs
        several milliseconds that a fully cached build can skip.
        """
        from kakoi.errors import ImageNotFound

        if self.options.pull:
            return None
        try:
            return self.store.resolve(name)
        except ImageNotFound:
            return None

    def _triggers(self, triggers: list[str], stage) -> list:
        from kakoi.build.parser import parse

        text = "FROM scratch\n" + "\n".join(triggers) + "\n"
        parsed = parse(text, f"{self.options.filename} (ONBUILD of line {stage.line})")
        for instruction in parsed.stages[0].instructions:
            instruction.line = stage.line
        return parsed.stages[0].instructions

    # Instructions

    def _execute(self, dockerfile, state: StageState, instruction) -> None:
        handler = getattr(self, "_do_" + instruction.keyword.lower(), None)
        if handler is None:
            raise self.error(instruction, f"unknown instruction {instruction.keyword}")
        handler(dockerfile, state, instruction)

    def _expand(self, state: StageState, text: str) -> str:
        from kakoi.build.parser import expand

        return expand(text, self._variables(state))

    def _variables(self, state: StageState) -> dict[str, str]:
        values = {k: v for k, v in state.args.items() if v is not None}
        values.update(state.env())
        return values

    def _config_step(self, state: StageState, instruction, change) -> None:
        """Apply a step that changes only the config, through the cache like every step."""
        text = instruction.text.strip()
        key = caches.step_key(state.key, text, json.dumps(self._args_used(state)))
        if self._cached(state, key):
            return
        change()
        self._add_history(state, text, empty=True)
        self._store(state, key)

    def _cached(self, state: StageState, key: str) -> bool:
        if self.options.no_cache:
            return False
        record = self.cache.get(key)
        if record is None:
            return False
        state.image = record["image"]
        state.layers = record["layers"]
        state.key = key
        self.say("--> Using cache")
        return True

    def _store(self, state: StageState, key: str) -> None:
        state.key = key
        self.cache.put(key, state.snapshot())

    def _add_history(self, state: StageState, created_by: str, empty: bool) -> None:
        entry = {"created": self._now(), "created_by": created_by}
        if empty:
            entry["empty_layer"] = True
        state.image.setdefault("history", []).append(entry)

    def _now(self) -> str:
        seconds = self.options.epoch if self.options.epoch is not None else time.time()
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))

    def _args_used(self, state: StageState) -> dict[str, str]:
        return {k: v for k, v in sorted(state.args.items()) if v is not None}

    def _do_env(self, dockerfile, state, instruction) -> None:
        from kakoi.build.parser import parse_key_values

        def change():
            env = state.env()
            for key, value in parse_key_values(instruction):
                env[key] = self._expand(state, value or "")
            state.config["Env"] = [f"{k}={v}" for k, v in env.items()]
        self._config_step(state, instruction, change)

    def _do_arg(self, dockerfile, state, instruction) -> None:
        from kakoi.build.parser import parse_key_values

        for key, value in parse_key_values(instruction):
            if key in self.options.build_args:
                value = self.options.build_args[key]
                self.used_args.add(key)
            elif value is not None:
                value = self._expand(state, value)
            elif self.global_args.get(key) is not None:
                value = self.global_args[key]
            state.args[key] = value

    def _do_label(self, dockerfile, state, instruction) -> None:
        from kakoi.build.parser import parse_key_values

        def change():
            labels = dict(state.config.get("Labels") or {})
            for key, value in parse_key_values(instruction):
                labels[self._expand(state, key)] = self._expand(state, value or "")
            state.config["Labels"] = labels
        self._config_step(state, instruction, change)

    def _do_maintainer(self, dockerfile, state, instruction) -> None:
        def change():
            state.image["author"] = instruction.arguments.strip()
        self._config_step(state, instruction, change)

    def _do_workdir(self, dockerfile, state, instruction) -> None:
        path = self._expand(state, instruction.arguments.strip())
        current = state.config.get("WorkingDir") or "/"
        path = posixpath.normpath(posixpath.join(current, path))
        text = f"WORKDIR {path}"
        key = caches.step_key(state.key, text, "")
        if self._cached(state, key):
            return
        state.config["WorkingDir"] = path
        view = MergedView(self._layer_dirs(state))
        if view.kind(path) != "dir":
            diff = self._new_diff()
            _make_parents(view, diff, path + "/x")
            self._commit_diff(state, diff, text)
        else:
            self._add_history(state, text, empty=True)
        self._store(state, key)

    def _do_user(self, dockerfile, state, instruction) -> None:
        self._config_step(state, instruction, lambda: state.config.__setitem__(
            "User", self._expand(state, instruction.arguments.strip())))

    def _do_cmd(self, dockerfile, state, instruction) -> None:
        state.cmd_set = True
        self._config_step(state, instruction, lambda: state.config.__setitem__(
            "Cmd", self._command(state, instruction)))

    def _do_entrypoint(self, dockerfile, state, instruction) -> None:
        def change():
            state.config["Entrypoint"] = self._command(state, instruction)
            # As in Docker, a new ENTRYPOINT drops the CMD that the base image set.
            if not state.cmd_set:
                state.config["Cmd"] = None
        self._config_step(state, instruction, change)

    def _command(self, state, instruction) -> list[str]:
        if instruction.json is not None:
            return list(instruction.json)
        shell = state.config.get("Shell") or DEFAULT_SHELL
        return list(shell) + [instruction.arguments.strip()]

    def _do_shell(self, dockerfile, state, instruction) -> None:
        if instruction.json is None:
            raise self.error(instruction, "SHELL requires the JSON form, such as "
                             'SHELL ["/bin/sh", "-c"]')
        self._config_step(state, instruction,
                          lambda: state.config.__setitem__("Shell", list(instruction.json)))

    def _do_expose(self, dockerfile, state, instruction) -> None:
        from kakoi.build.parser import split_words

        def change():
            ports = dict(state.config.get("ExposedPorts") or {})
            for word in split_words(self._expand(state, instruction.arguments)):
                ports[word if "/" in word else word + "/tcp"] = {}
            state.config["ExposedPorts"] = ports
        self._config_step(state, instruction, change)

    def _do_volume(self, dockerfile, state, instruction) -> None:
        from kakoi.build.parser import split_words

        def change():
            volumes = dict(state.config.get("Volumes") or {})
            paths = instruction.json if instruction.json is not None else split_words(
                instruction.arguments)
            for path in paths:
                volumes[self._expand(state, path)] = {}
            state.config["Volumes"] = volumes
        self._config_step(state, instruction, change)

    def _do_stopsignal(self, dockerfile, state, instruction) -> None:
        self._config_step(state, instruction, lambda: state.config.__setitem__(
            "StopSignal", self._expand(state, instruction.arguments.strip())))

    def _do_onbuild(self, dockerfile, state, instruction) -> None:
        def change():
            triggers = list(state.config.get("OnBuild") or [])
            triggers.append(instruction.arguments.strip())
            state.config["OnBuild"] = triggers
        self._config_step(state, instruction, change)

    def _do_healthcheck(self, dockerfile, state, instruction) -> None:
        check = self._healthcheck(instruction)
        self._config_step(state, instruction,
                          lambda: state.config.__setitem__("Healthcheck", check))

    def _healthcheck(self, instruction) -> dict:
        words = instruction.arguments.strip().split(None, 1)
        kind = words[0].upper() if words else ""
        if kind == "NONE":
            return {"Test": ["NONE"]}
        if kind != "CMD" or len(words) < 2:
            raise self.error(instruction, "HEALTHCHECK needs NONE or CMD followed by a command")
        rest = words[1].strip()
        if instruction.json is not None:
            test = ["CMD"] + list(instruction.json)
        elif rest.startswith("["):
            test = ["CMD"] + json.loads(rest)
        else:
            test = ["CMD-SHELL", rest]
        check = {"Test": test}
        names = {"interval": "Interval", "timeout": "Timeout", "start-period": "StartPeriod",
                 "start-interval": "StartInterval", "retries": "Retries"}
        for flag, value in instruction.flags.items():
            if flag not in names:
                raise self.error(instruction, f"unknown flag --{flag} for HEALTHCHECK")
            value = value[-1] if isinstance(value, list) else value
            check[names[flag]] = int(value) if flag == "retries" else _duration(
                value, lambda why: self.error(instruction, why))
        return check

    # RUN

    def _do_run(self, dockerfile, state, instruction) -> None:
        args = self._run_args(state, instruction)
        env_args = self._args_used(state)
        created_by = "RUN " + " ".join(args)
        if env_args:
            created_by = f"|{len(env_args)} " + " ".join(
                f"{k}={v}" for k, v in env_args.items()) + " " + " ".join(args)
            created_by = "RUN " + created_by
        key = caches.step_key(state.key, created_by, json.dumps(env_args))
        if self._cached(state, key):
            return
        diff = self._run_container(state, instruction, args)
        self._commit_diff(state, diff, created_by)
        self._store(state, key)

    def _run_args(self, state, instruction) -> list[str]:
        if instruction.json is not None:
            return list(instruction.json)
        script = instruction.arguments.strip()
        heredocs = instruction.heredocs or []
        if len(heredocs) == 1 and script.lstrip("<-").strip("'\"") == heredocs[0].name:
            # `RUN <<EOF` alone: the body is the script, as BuildKit runs it.
            script = heredocs[0].content
        elif heredocs:
            # `RUN cat <<EOF > /file` and the like: the shell reads the bodies itself, so
            # quoted delimiters and <<- keep their shell meaning.
            script += "\n" + "".join(f"{heredoc.content}{heredoc.name}\n" for heredoc in heredocs)
        shell = state.config.get("Shell") or DEFAULT_SHELL
        return list(shell) + [script]

    def _run_container(self, state, instruction, args: list[str]) -> str:
        from kakoi.engine import config as oci_config
        from kakoi.engine.config import RunOptions
        from kakoi.engine.run import _write_etc_files, overlay_mount

        import tempfile

        directory = tempfile.mkdtemp(dir=self._work_dir(), prefix="run-")
        for name in ("rootfs", "upper", "work"):
            os.mkdir(os.path.join(directory, name))
        layer_dirs = self._layer_dirs(state)
        if not layer_dirs:
            layer_dirs = [os.path.join(directory, "empty")]
            os.mkdir(layer_dirs[0])
        env = [f"{k}={v}" for k, v in self._args_used(state).items()]
        env += [f"{k}={v}" for k, v in self.options.build_args.items()
                if k in PROXY_ARGS and k not in state.args]
        container_id = os.urandom(32).hex()
        run = RunOptions("build", command=args, entrypoint="", env=env,
                         user=state.config.get("User") or None,
                         workdir=state.config.get("WorkingDir") or None,
                         cgroup_parent=self.options.cgroup_parent)
        run_config = {"config": {"Env": [e for e in state.config.get("Env") or []]}}
        try:
            spec = oci_config.build(run, run_config, container_id, layer_dirs, directory)
        except KakoiError as error:
            raise self.error(instruction, str(error)) from None
        _write_etc_files(directory, spec["hostname"], "none")
        with open(os.path.join(directory, "config.json"), "w") as file:
            json.dump(spec, file)
        exit_code, tail = self._start(container_id, spec, directory, layer_dirs, instruction)
        if exit_code != 0:
            shown = " | ".join(tail[-3:]) if tail else "no output"
            raise self.error(instruction, f"RUN {json.dumps(args[-1] if instruction.json is None else args)} "
                             f"failed with exit code {exit_code}; last output: {shown}")
        upper = os.path.join(directory, "upper")
        _drop_mount_points(upper, MergedView(layer_dirs))
        diff = self._new_diff()
        os.rmdir(diff)
        os.rename(upper, diff)
        return diff

    def _start(self, container_id, spec, directory, layer_dirs, instruction):
        import collections
        import threading

        from kakoi.engine.run import overlay_mount
        from kakoi.runtime import attach, process

        tail: collections.deque[str] = collections.deque(maxlen=10)
        read_fd, write_fd = os.pipe()
        stdin = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        reader = threading.Thread(target=self._relay, args=(read_fd, tail), daemon=True)
        reader.start()
        try:
            try:
                container = process.create(
                    container_id, spec, directory,
                    rootfs_mounts=[overlay_mount(directory, layer_dirs)],
                    stdio=(stdin, write_fd, write_fd), kill_with_parent=True,
                    seccomp_cache=os.path.join(self.root, "cache", "seccomp"))
            finally:
                os.close(stdin)
                os.close(write_fd)
            try:
                container.start()
                status = attach.wait(container.pid)
            finally:
                container.kill()
                container.destroy()
        except KakoiError as error:
            raise self.error(instruction, f"RUN failed: {error}") from None
        finally:
            reader.join(timeout=10)
        return attach.exit_code(status), list(tail)

    def _relay(self, fd: int, tail) -> None:
        with os.fdopen(fd, "rb") as stream:
            for line in stream:
                text = line.decode("utf-8", "replace").rstrip("\n")
                tail.append(text)
                if not self.options.quiet:
                    sys.stdout.write(text + "\n")
                    sys.stdout.flush()

    # COPY and ADD

    def _do_copy(self, dockerfile, state, instruction) -> None:
        self._copy(dockerfile, state, instruction, add=False)

    def _do_add(self, dockerfile, state, instruction) -> None:
        self._copy(dockerfile, state, instruction, add=True)

    def _check_platform(self, stage, platform: str | None) -> None:
        """Accept FROM --platform only for the host's platform: kakoi cannot emulate others."""
        if not platform:
            return
        from kakoi.image.archive import host_architecture

        host = f"linux/{host_architecture()}"
        if platform.split("/")[:2] != host.split("/"):
            raise BuildError(f"FROM --platform={platform} is not supported: kakoi builds "
                             f"only for this host's {host}; build on a host of that platform",
                             stage.line, self.options.filename)

    def _copy(self, dockerfile, state, instruction, add: bool) -> None:
        words = self._copy_words(state, instruction)
        if len(words) < 2:
            raise self.error(instruction, f"{instruction.keyword} needs at least one source "
                             "and a destination")
        for flag in instruction.flags:
            if flag in ("parents", "exclude", "checksum", "keep-git-dir"):
                # Ignoring these would copy other files than asked, or skip a check.
                raise self.error(instruction, f"{instruction.keyword} --{flag} is not "
                                 "supported yet: leave it out, or build with BuildKit")
            if flag not in ("from", "chown", "chmod", "link"):
                raise self.error(instruction, f"unknown flag --{flag} for "
                                 f"{instruction.keyword}")
        job = CopyJob(self, dockerfile, state, instruction, words, add)
        job.run()

    def _copy_words(self, state, instruction) -> list[str]:
        from kakoi.build.parser import split_words

        if instruction.json is not None:
            words = list(instruction.json)
        else:
            words = split_words(instruction.arguments)
        return [self._expand(state, word) for word in words]

    # Layers

    def _layer_dirs(self, state: StageState) -> list[str]:
        # The str path of the store keeps pathlib out of a fully cached build.
        return [os.path.join(self.store._layer_dir(layer["chain_id"]), "diff")
                for layer in state.layers]

    def _new_diff(self) -> str:
        import tempfile

        path = tempfile.mkdtemp(dir=self._work_dir(), prefix="diff-")
        os.chmod(path, 0o755)
        return path

    def _commit_diff(self, state: StageState, diff: str, created_by: str) -> None:
        """Add the diff as a layer, or record an empty step when it holds nothing."""
        if caches.is_empty(diff):
            os.rmdir(diff)
            self._add_history(state, created_by, empty=True)
            return
        parent = state.layers[-1]["chain_id"] if state.layers else None
        layer = caches.commit_layer(self.store, diff, parent, self.options.epoch)
        state.layers = state.layers + [layer]
        state.image.setdefault("rootfs", {"type": "layers"})["diff_ids"] = [
            record["diff_id"] for record in state.layers]
        self._add_history(state, created_by, empty=False)

    # The image

    def _commit(self, state: StageState) -> str:
        image = json.loads(json.dumps(state.image))
        config = image.setdefault("config", {})
        if self.options.labels:
            config["Labels"] = {**(config.get("Labels") or {}), **self.options.labels}
        image["rootfs"] = {"type": "layers",
                           "diff_ids": [layer["diff_id"] for layer in state.layers]}
        history = image.get("history") or []
        image["created"] = history[-1]["created"] if history else self._now()
        if "architecture" not in image:
            image["architecture"] = _architecture()
        image.setdefault("os", "linux")
        image.pop("container_config", None)
        image.pop("container", None)
        image.pop("id", None)
        image.pop("parent", None)
        config = {k: v for k, v in config.items() if v not in (None, [], {})}
        image["config"] = config
        data = json.dumps(image, sort_keys=True, separators=(",", ":")).encode()
        names = self._names()
        record = self._unchanged(data, names)
        if record is None:
            record = self.store.commit_built(names, data, state.layers)
        unused = sorted(set(self.options.build_args) - self.used_args - PROXY_ARGS)
        if unused:
            print(f"kakoi: warning: build args not consumed by any ARG: {', '.join(unused)}",
                  file=sys.stderr)
        for name in self.options.tags:
            self.say(f"Successfully tagged {name}")
        return record.id

    def _unchanged(self, config: bytes, names: list[str]):
        """Return the stored image when it has this config and every name already, else None.

        commit_built would then rewrite the same blobs and index, after importing the archive
        code and OpenSSL: a fully cached rebuild skips that.
        """
        hasher = caches.sha256(len(config))
        hasher.update(config)
        image_id = "sha256:" + hasher.hexdigest()
        images = self.store.list()
        found = [record for record in images if record.id == image_id]
        if not found:
            return None
        record = found[0]
        if any(name not in record.names for name in names):
            return None
        if any(name in other.names for other in images if other is not record
               for name in names):
            return None
        for digest in (record.id, record.manifest_digest):
            if not os.path.exists(self.store._blob_file(digest)):
                return None
        return record

    def _names(self) -> list[str]:
        from kakoi.image import reference

        return [str(reference.parse(tag)) for tag in self.options.tags]


class MergedView:
    """Read access to the union of overlay-form layer dirs, as the container would see it."""

    def __init__(self, layer_dirs: list[str]):
        self.layers = list(reversed(layer_dirs))  # topmost first

    def _visible(self, path: str) -> list[str]:
        """Return the host paths that make up `path`, topmost first; [] when it is absent."""
        parts = [part for part in path.strip("/").split("/") if part]
        roots = list(self.layers)
        for depth in range(len(parts) + 1):
            relative = "/".join(parts[:depth])
            seen = []
            for layer in roots:
                host = os.path.join(layer, relative) if relative else layer
                try:
                    info = os.lstat(host)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                if stat.S_ISCHR(info.st_mode) and info.st_rdev == 0:
                    break
                if not stat.S_ISDIR(info.st_mode):
                    if not seen:
                        seen.append(layer)
                    break
                seen.append(layer)
                if _opaque(host):
                    break
            if not seen:
                return []
            roots = seen
        return [os.path.join(layer, *parts) for layer in roots]

    def lookup(self, path: str) -> str | None:
        found = self._visible(path)
        return found[0] if found else None

    def kind(self, path: str) -> str | None:
        host = self.lookup(path)
        if host is None:
            return None
        mode = os.lstat(host).st_mode
        return "dir" if stat.S_ISDIR(mode) else "link" if stat.S_ISLNK(mode) else "file"

    def listdir(self, path: str) -> list[str]:
        names: set[str] = set()
        hidden: set[str] = set()
        for host in self._visible(path):
            if not os.path.isdir(host) or os.path.islink(host):
                break
            for name in os.listdir(host):
                if name in names or name in hidden:
                    continue
                info = os.lstat(os.path.join(host, name))
                if stat.S_ISCHR(info.st_mode) and info.st_rdev == 0:
                    hidden.add(name)
                else:
                    names.add(name)
        return sorted(names)

    def read(self, path: str) -> str | None:
        host = self.lookup(path)
        if host is None or not os.path.isfile(host) or os.path.islink(host):
            return None
        with open(host, encoding="utf-8", errors="replace") as file:
            return file.read(1 << 20)


def _opaque(path: str) -> bool:
    try:
        return os.getxattr(path, caches.OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _make_parents(view: MergedView, diff: str, path: str,
                  owner: tuple[int, int] | None = None) -> None:
    """Create the parents of `path` in `diff`, copying the metadata of those that exist.

    Parents that are new get mode 755 and `owner` (root when None), as COPY --chown gives
    the directories that it creates in Docker.
    """
    parts = [part for part in path.strip("/").split("/") if part][:-1]
    for depth in range(1, len(parts) + 1):
        relative = "/".join(parts[:depth])
        target = os.path.join(diff, relative)
        if os.path.isdir(target) and not os.path.islink(target):
            continue
        os.mkdir(target)
        existing = view.lookup(relative)
        if existing is not None and os.path.isdir(existing):
            info = os.stat(existing)
            os.chown(target, info.st_uid, info.st_gid)
            os.chmod(target, stat.S_IMODE(info.st_mode))
            os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))
        else:
            os.chmod(target, 0o755)
            if owner is not None:
                os.chown(target, *owner)


def _drop_mount_points(upper: str, view: MergedView) -> None:
    """Remove the empty mount points that the runtime created, and dirs copied up only for them."""
    for relative in _MOUNT_POINTS:
        path = os.path.join(upper, relative)
        try:
            info = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            continue
        in_image = view.kind(relative)
        if stat.S_ISREG(info.st_mode) and info.st_size == 0 and in_image is None:
            os.unlink(path)
        elif stat.S_ISDIR(info.st_mode) and not os.listdir(path) and not _opaque(path):
            if in_image in (None, "dir"):
                os.rmdir(path)


def _duration(text: str, error) -> int:
    """Parse a Go duration such as 30s, 1m30s or 500ms into nanoseconds."""
    import re

    units = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
             "m": 60_000_000_000, "h": 3_600_000_000_000}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise error(f"invalid duration {text!r}: use a number with a unit, such as 30s or 1m")
    return int(sum(float(n) * units[u] for n, u in parts))


def _architecture() -> str:
    from kakoi.image.archive import host_architecture

    return host_architecture()


def build(root: str, options: BuildOptions) -> str:
    """Build the image and return its id."""
    return Builder(root, options).build()


_HEREDOC_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


class CopyJob:
    """One COPY or ADD: gathers the sources, checks the cache and writes the new layer."""

    def __init__(self, builder: Builder, dockerfile, state: StageState, instruction,
                 words: list[str], add: bool):
        self.builder = builder
        self.dockerfile = dockerfile
        self.state = state
        self.instruction = instruction
        self.sources = words[:-1]
        self.dest = words[-1]
        self.add = add
        self.view = MergedView(builder._layer_dirs(state))
        self.items: list[tuple[str, str, str]] = []  # (kind, name, host path)

    def flag(self, name: str) -> str | None:
        value = self.instruction.flags.get(name)
        if isinstance(value, list):
            value = value[-1] if value else None
        if value is None or value is True:
            return None
        return self.builder._expand(self.state, str(value))

    def fail(self, message: str) -> BuildError:
        return self.builder.error(self.instruction, message)

    def run(self) -> None:
        heredocs = {heredoc.name: heredoc for heredoc in self.instruction.heredocs or []}
        source_view = None if heredocs and self.flag("from") is None else self._source_view()
        for source in self.sources:
            if source.startswith("<<") and heredocs:
                self._gather_heredoc(heredocs, source)
            elif source_view is not None:
                self._gather_view(source_view, source)
            elif self.add and source.startswith(("http://", "https://")):
                self._fetch(source)
            else:
                self._gather_context(source)
        workdir = self.state.config.get("WorkingDir") or "/"
        self.directory_form = self.dest.endswith("/") or self.dest in (".", "..")
        self.target = posixpath.normpath(posixpath.join(workdir, self.dest))
        sources = [item for item in self.items if item[0] != "entry"]
        if len(sources) > 1 and not self.directory_form and \
                self.view.kind(self.target) != "dir":
            raise self.fail(f"{self.instruction.keyword} with more than one source needs a "
                            f"destination directory ending in /, not {self.dest!r}")
        self.owner = self._owner()
        self.mode = self._mode()

        created_by, key = self._key()
        if self.builder._cached(self.state, key):
            return
        diff = self.builder._new_diff()
        for kind, name, host in self.items:
            self._write(diff, kind, name, host)
        self.builder._commit_diff(self.state, diff, created_by)
        self.builder._store(self.state, key)

    def _source_view(self) -> MergedView | None:
        source = self.flag("from")
        if source is None:
            if self.builder.context.directory is None:
                raise self.fail(f"{self.instruction.keyword} needs a build context, but the "
                                "Dockerfile came from stdin: give a context directory")
            return None
        index = self.builder._stage_ref(self.dockerfile, source, len(self.dockerfile.stages))
        if index is not None and index in self.builder.stages:
            return MergedView(self.builder._layer_dirs(self.builder.stages[index]))
        if index is not None:
            raise self.fail(f"--from={source} names a stage that is not built before this one")
        try:
            record = self.builder._stored_image(source)
            if record is None:
                from kakoi.engine.run import resolve_image

                record = resolve_image(self.builder.store, source,
                                       "always" if self.builder.options.pull else "missing")
            record = self.builder.store.ensure_unpacked(record)
        except KakoiError as error:
            raise self.fail(f"--from={source} is neither a stage nor an image: {error}") \
                from None
        return MergedView(self.builder.store.layer_dirs(record))

    def _gather_heredoc(self, heredocs: dict, source: str) -> None:
        """Add a heredoc's body as a file named after its delimiter, as BuildKit does."""
        name = source.lstrip("<").lstrip("-").strip("'\"")
        heredoc = heredocs.get(name)
        if heredoc is None:
            raise self.fail(f"{self.instruction.keyword} source {source!r} names no heredoc "
                            "of this instruction")
        content = heredoc.content
        if heredoc.expand:
            # Variables only, as a shell expands an unquoted heredoc: quotes stay.
            variables = self.builder._variables(self.state)
            content = _HEREDOC_VARIABLE.sub(
                lambda match: variables.get(match.group(1) or match.group(2), ""), content)
        path = os.path.join(self.builder._work_dir(), f"heredoc-{len(self.items)}-{name}")
        with open(path, "w") as file:
            file.write(content)
        self.items.append(("file", name, path))

    def _gather_context(self, source: str) -> None:
        context = self.builder.context
        if any(char in source for char in "*?["):
            found = context.glob(source)
            if not found:
                raise self.fail(f"{self.instruction.keyword} source {source!r}: no files in "
                                "the context match it")
            for relative in found:
                self._add_context_item(relative)
            return
        resolved = context.resolve(source)
        if resolved is None:
            raise self.fail(f"{self.instruction.keyword} source {source!r} is outside the "
                            "build context: copy it into the context directory first")
        relative, path = resolved
        if not os.path.lexists(path) or (relative and context.ignored(relative)):
            raise self.fail(f"{self.instruction.keyword} source {source!r} not found in the "
                            "build context (or excluded by .dockerignore)")
        self._add_context_item(relative)

    def _add_context_item(self, relative: str) -> None:
        context = self.builder.context
        path = os.path.join(context.directory, relative) if relative else context.directory
        if os.path.islink(path):
            self._add_link_target(relative, path)
            return
        if os.path.isdir(path):
            self.items.append(("dir", "", path))
            for below in context.walk(relative):
                name = os.path.relpath(os.path.join(context.directory, below), path)
                self.items.append(("entry", name, os.path.join(context.directory, below)))
            return
        self.items.append(("file", posixpath.basename(relative), path))

    def _add_link_target(self, relative: str, path: str) -> None:
        # Docker follows a symlink that a source names (BuildKit copies with FollowSymlinks),
        # while symlinks below a copied directory stay symlinks.
        directory = self.builder.context.directory
        real = os.path.realpath(path)
        if real != directory and not real.startswith(directory + os.sep):
            raise self.fail(f"{self.instruction.keyword} source {relative!r} is a symlink to "
                            f"{os.readlink(path)!r} outside the build context: copy the "
                            "target into the context")
        if not os.path.exists(real):
            raise self.fail(f"{self.instruction.keyword} source {relative!r} is a symlink to "
                            f"the missing {os.readlink(path)!r}: fix or remove the link")
        if os.path.isdir(real):
            target = os.path.relpath(real, directory)
            self._add_context_item("" if target == "." else target)
            return
        self.items.append(("file", posixpath.basename(relative), real))

    def _gather_view(self, view: MergedView, source: str) -> None:
        path = posixpath.normpath("/" + source)
        host = view.lookup(path)
        # A symlink that the source names is followed inside the image, as from the context.
        for _ in range(40):
            if host is None or not os.path.islink(host):
                break
            target = os.readlink(host)
            path = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
            host = view.lookup(path)
        if host is None or os.path.islink(host):
            raise self.fail(f"{self.instruction.keyword} source {source!r} not found in "
                            f"--from={self.flag('from')}")
        if os.path.isdir(host) and not os.path.islink(host):
            self.items.append(("dir", "", host))
            pending = [""]
            while pending:
                relative = pending.pop(0)
                for name in view.listdir(posixpath.join(path, relative)):
                    below = posixpath.join(relative, name) if relative else name
                    entry = view.lookup(posixpath.join(path, below))
                    self.items.append(("entry", below, entry))
                    if os.path.isdir(entry) and not os.path.islink(entry):
                        pending.append(below)
            return
        self.items.append(("file", posixpath.basename(path), host))

    def _fetch(self, url: str) -> None:
        import urllib.error
        import urllib.parse
        import urllib.request

        import shutil
        import tempfile

        name = posixpath.basename(urllib.parse.urlparse(url).path) or "index.html"
        path = os.path.join(tempfile.mkdtemp(dir=self.builder._work_dir(), prefix="url-"), name)
        try:
            with urllib.request.urlopen(url, timeout=30) as response, open(path, "wb") as out:
                shutil.copyfileobj(response, out)
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", None) or error
            raise self.fail(f"ADD cannot fetch {url}: {reason}; check the URL or copy the "
                            "file into the context") from None
        os.chmod(path, 0o600)
        self.items.append(("url", name, path))

    def _owner(self) -> tuple[int, int] | None:
        text = self.flag("chown")
        if text is None:
            return None
        user, _, group = text.partition(":")
        uid = self._lookup_id(user, "/etc/passwd", "user")
        gid = self._lookup_id(group, "/etc/group", "group") if group else uid
        return uid, gid

    def _lookup_id(self, name: str, path: str, what: str) -> int:
        if name.isdigit():
            return int(name)
        for line in (self.view.read(path) or "").splitlines():
            fields = line.split(":")
            if len(fields) > 2 and fields[0] == name and fields[2].isdigit():
                return int(fields[2])
        raise self.fail(f"--chown: {what} {name!r} not found in the image's {path}")

    def _mode(self) -> int | None:
        text = self.flag("chmod")
        if text is None:
            return None
        try:
            return int(text, 8)
        except ValueError:
            raise self.fail(f"invalid --chmod {text!r}: use an octal mode such as 755") \
                from None

    def _key(self) -> tuple[str, str]:
        entries = [(f"{kind}:{name}", host) for kind, name, host in self.items]
        content = hash_tree(entries)
        kind = "dir" if any(item[0] == "dir" for item in self.items) else "file"
        created_by = f"{self.instruction.keyword} {kind}:{content} in {self.target}"
        if self.directory_form and not self.target.endswith("/"):
            created_by += "/"
        flags = json.dumps({k: self.flag(k) for k in ("chown", "chmod", "from")})
        key = caches.step_key(self.state.key, created_by, flags + self.dest)
        return created_by, key

    def _write(self, diff: str, kind: str, name: str, host: str) -> None:
        if kind == "dir":
            self._ensure_dir(diff, self.target)
            return
        if kind == "entry":
            # Entries below a directory source follow their "dir" item.
            self._place(diff, host, posixpath.join(self.target, name))
            return
        if self.add and kind == "file" and _is_archive(host):
            self._ensure_dir(diff, self.target)
            self._extract(host, os.path.join(diff, self.target.lstrip("/")))
            return
        into_directory = self.directory_form or self.view.kind(self.target) == "dir" or \
            len([item for item in self.items if item[0] != "entry"]) > 1
        destination = posixpath.join(self.target, name) if into_directory else self.target
        self._place(diff, host, destination)

    def _ensure_dir(self, diff: str, path: str) -> None:
        _make_parents(self.view, diff, path + "/x", self.owner)

    def _place(self, diff: str, host: str, destination: str) -> None:
        import shutil

        _make_parents(self.view, diff, destination, self.owner)
        target = os.path.join(diff, destination.lstrip("/"))
        info = os.lstat(host)
        if os.path.lexists(target) and not (stat.S_ISDIR(info.st_mode)
                                            and os.path.isdir(target)):
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target)
            else:
                os.unlink(target)
        if stat.S_ISLNK(info.st_mode):
            os.symlink(os.readlink(host), target)
        elif stat.S_ISDIR(info.st_mode):
            if not os.path.isdir(target):
                os.mkdir(target)
        elif stat.S_ISREG(info.st_mode):
            shutil.copyfile(host, target, follow_symlinks=False)
        else:
            return  # devices, fifos and sockets in a context are not copied
        uid, gid = self.owner if self.owner is not None else (
            (0, 0) if self.flag("from") is None else (info.st_uid, info.st_gid))
        os.lchown(target, uid, gid)
        if not stat.S_ISLNK(info.st_mode):
            os.chmod(target, self.mode if self.mode is not None else stat.S_IMODE(info.st_mode))
        os.utime(target, ns=(info.st_mtime_ns, info.st_mtime_ns), follow_symlinks=False)

    def _extract(self, archive: str, directory: str) -> None:
        from kakoi.image.layer import unpack

        with open(archive, "rb") as raw:
            stream = _decompressed(raw)
            try:
                unpack(stream, _path(directory), f"ADD {posixpath.basename(archive)}")
            except KakoiError as error:
                raise self.fail(f"ADD cannot extract {posixpath.basename(archive)}: {error}") \
                    from None


def _is_archive(path: str) -> bool:
    import tarfile

    with open(path, "rb") as file:
        head = file.read(6)
    if head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ")):
        return True
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def _decompressed(raw):
    """Return a stream of the tar inside raw: bzip2 and xz are opened here, gzip by unpack."""
    head = raw.read(6)
    raw.seek(0)
    if head.startswith(b"BZh"):
        import bz2
        import io

        return io.BytesIO(bz2.decompress(raw.read()))
    if head.startswith(b"\xfd7zXZ"):
        import io
        import lzma

        return io.BytesIO(lzma.decompress(raw.read()))
    return raw


def _path(text: str):
    from pathlib import Path

    return Path(text)
