"""One Beam SDK worker process per GPU.

Beam runs several SDK worker processes on a machine (``--sdk_worker_parallelism``,
``--direct_num_workers`` with ``--direct_running_mode=multi_processing``, one
per core on Dataflow). With ``model_sharing="process"`` each process loads its
own model; pinning gives each process its own GPU instead of piling every
session on ``cuda:0``. Worker ``i`` of ``n`` GPUs uses ``cuda:(i % n)``, where
``i`` is ``SUTRA_DEVICE_INDEX`` when the launcher sets it, else the lowest free
slot the process could lock (:func:`~sutra_embedder.core.pool.worker_index`).

Call :func:`acquire_pinned_model` where a DoFn loads its model, in
``DoFn.setup()`` (inside the worker process, before any CUDA session exists)::

    class MyEmbedDoFn(beam.DoFn):
        def setup(self):
            self.model = acquire_pinned_model(self.config, devices="all")

A worker process started with ``CUDA_VISIBLE_DEVICES`` naming one GPU (see
:attr:`~sutra_embedder.core.pool.DevicePin.env`) sees it as its only device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sutra_embedder.core.config import EmbedderConfig
from sutra_embedder.core.pool import DeviceSpec, pinned_config

from .config import ModelSharing
from .model import EmbeddingModel, acquire_model


def acquire_pinned_model(
    config: EmbedderConfig,
    sharing: ModelSharing = "process",
    devices: str | Sequence[DeviceSpec] = "all",
    env: Mapping[str, str] | None = None,
) -> EmbeddingModel:
    """This worker process's model, loaded on the process's own GPU.

    Args:
        config: The embedder settings; the runtime device is replaced by the
            worker's device (CPU when the machine has no GPU).
        sharing: ``"process"`` (one model per process: one per GPU). With
            ``"multi_process"`` every process of the machine shares one model,
            so only the first process's device is used.
        devices: The devices to spread workers over (see
            :func:`~sutra_embedder.core.pool.parse_devices`).
        env: Environment to read ``SUTRA_DEVICE_INDEX`` from (default: ``os.environ``).
    """
    return acquire_model(pinned_config(config, devices, env), sharing)


__all__ = ["acquire_pinned_model"]
