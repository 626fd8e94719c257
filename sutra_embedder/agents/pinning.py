"""One Faust worker process per GPU.

Faust scales by running several worker processes of one app (same app id):
Kafka spreads the topic's partitions over them. On a machine with several GPUs,
start one worker per GPU, each pinned to its own device::

    import os, subprocess
    from sutra_embedder.core.pool import parse_devices, pin_worker

    gpus = parse_devices("all")
    for i in range(len(gpus)):  # each process sees only its own GPU, as cuda:0
        subprocess.Popen(["sutra", "worker", "--device", "cuda", ...], env=os.environ | pin_worker(i, gpus).env)

(``sutra worker`` needs nothing more: its ``cuda:0`` is the pinned GPU), and in
a worker built in Python, give the agent the pinned embedder::

    run_worker(config, embedder=worker_embedder(config.embedder))

:func:`worker_embedder` reads ``SUTRA_DEVICE_INDEX`` (set by the launcher, or
by ``pin_worker(...).env``); without it the process locks the lowest free
device slot, so workers started by hand also spread one per GPU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sutra_embedder.core.config import EmbedderConfig
from sutra_embedder.core.embedder import Embedder
from sutra_embedder.core.pool import DeviceSpec, pinned_config


def worker_embedder(
    config: EmbedderConfig,
    devices: str | Sequence[DeviceSpec] = "all",
    env: Mapping[str, str] | None = None,
) -> Embedder:
    """The embedder of this worker process, on the device its worker index picks.

    Args:
        config: The embedder settings; the runtime device is replaced by the
            worker's device (CPU when the machine has no GPU).
        devices: The devices to spread workers over (see
            :func:`~sutra_embedder.core.pool.parse_devices`).
        env: Environment to read ``SUTRA_DEVICE_INDEX`` from (default: ``os.environ``).
    """
    return Embedder(pinned_config(config, devices, env))


__all__ = ["worker_embedder"]
