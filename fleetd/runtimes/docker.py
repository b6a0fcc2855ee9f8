"""The ``docker run`` argv for an instance with ``docker_enabled: true``, as a pure function.

The container is named ``fleetd-<instance>-<replica>`` and labelled with the instance and the replica, so an
agent started again finds it (``docker ps --filter label=fleetd.instance=...``) instead of starting a
duplicate. ``--rm`` removes it when it stops. Environment variables are passed as ``-e NAME`` only: docker
copies the value from its own environment (the agent sets it there), so secrets never show on a command line.
A model given as an absolute path is mounted read-only at the same path, so the in-container argv names the
model exactly as the direct one does. The image's own entrypoint is reset, so the in-container argv is the
whole command whatever the image declares.
"""

from __future__ import annotations

CONTAINER_HOST = "0.0.0.0"
"""What a backend binds inside its container (every interface: docker forwards to it); the host side of ``-p``
keeps the node's own address."""

GPU_FLAGS: dict[str, tuple[str, ...]] = {
    "nvidia": ("--gpus", "all"),
    "amd": ("--device", "/dev/kfd", "--device", "/dev/dri"),
}
"""``docker run`` flags that give a container the node's GPUs, by GPU vendor; other vendors get none."""


def container_name(instance: str, replica: int) -> str:
    """The container of replica ``replica`` of ``instance`` (instance names are valid container names)."""
    return f"fleetd-{instance}-{replica}"


def docker_run_argv(
    *,
    docker: str,
    name: str,
    instance: str,
    replica: int,
    host: str,
    port: int,
    gpu_vendor: str,
    env_names: tuple[str, ...],
    model: str,
    image: str,
    container_argv: tuple[str, ...],
) -> tuple[str, ...]:
    """``docker run`` of ``container_argv`` in ``image``, published on ``host:port``, with the node's GPUs."""
    argv = [
        docker,
        "run",
        "--rm",
        "--name",
        name,
        "--label",
        f"fleetd.instance={instance}",
        "--label",
        f"fleetd.replica={replica}",
        "-p",
        f"{_publish_host(host)}:{port}:{port}",
        *GPU_FLAGS.get(gpu_vendor, ()),
    ]
    for variable in env_names:
        argv += ["-e", variable]
    if model.startswith("/"):
        argv += ["-v", f"{model}:{model}:ro"]
    argv += ["--entrypoint=", image, *container_argv]
    return tuple(argv)


def _publish_host(host: str) -> str:
    """``-p`` wants an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
