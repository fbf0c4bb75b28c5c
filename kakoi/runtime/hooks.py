"""OCI hooks: programs run at points of the container's life, with its state on stdin."""

from kakoi import jsontext
from kakoi.errors import ContainerError

# Where each kind of hook runs: the runtime's namespaces, or the container's.
RUNTIME_HOOKS = ("prestart", "createRuntime", "poststart", "poststop")
CONTAINER_HOOKS = ("createContainer", "startContainer")


def state(spec: dict, container_id: str, status: str, pid: int, bundle: str) -> dict:
    """Return the state object of the runtime spec, which hooks read on stdin."""
    return {"ociVersion": spec.get("ociVersion", "1.0.2"), "id": container_id,
            "status": status, "pid": pid, "bundle": bundle,
            "annotations": spec.get("annotations") or {}}


def run(spec: dict, kind: str, container_state: dict) -> None:
    """Run every hook of one kind in order; the first failure raises ContainerError."""
    import subprocess

    for index, hook in enumerate((spec.get("hooks") or {}).get(kind) or []):
        path = hook.get("path", "")
        args = hook.get("args") or [path]
        env = dict(entry.split("=", 1) for entry in hook.get("env") or [] if "=" in entry)
        timeout = hook.get("timeout")
        where = f"{kind} hook {index} ({path})"
        if timeout is not None and timeout <= 0:
            raise ContainerError(f"{where}: timeout must be greater than 0")
        try:
            completed = subprocess.run(args, executable=path, env=env, timeout=timeout,
                                       input=jsontext.dumps(container_state).encode(),
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except subprocess.TimeoutExpired:
            raise ContainerError(f"{where} timed out after {timeout} s")
        except OSError as error:
            raise ContainerError(f"{where} cannot be run: {error.strerror}")
        if completed.returncode != 0:
            output = (completed.stderr or completed.stdout).decode(errors="replace").strip()
            detail = f": {output.splitlines()[-1]}" if output else ""
            raise ContainerError(f"{where} failed with exit status "
                                 f"{completed.returncode}{detail}")


def has(spec: dict, *kinds: str) -> bool:
    hooks = spec.get("hooks") or {}
    return any(hooks.get(kind) for kind in kinds)
