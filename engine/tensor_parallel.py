"""Tensor-parallel execution: one worker process per rank, driven by the engine's process.

The engine process is rank 0: it schedules, builds each step's inputs, ships
them to the other ranks as one packed int64 tensor over a gloo control group
(cheap, CPU-side, whatever the compute backend), runs its own shard of the
model and samples from the gathered logits. Ranks 1..N-1 are spawned worker
processes that loop: receive a step, run their shard (joining every
all-reduce/all-gather of the compute group: NCCL on GPU, gloo on CPU),
repeat until told to stop.

Over several machines (`nnodes`), each runs tensor_parallel_size / nnodes
consecutive ranks: node 0 the engine and its spawned workers, every other
node a headless `pagoda serve --headless` (`run_headless_node`) whose process
is its first rank and spawns the rest; all meet at node 0's
master_addr:master_port. A node that goes away fails the others' next
collective, so the engine stops (its /health fails) instead of hanging.

A worker that dies must take the engine down, not hang it: a monitor thread
watches the worker processes and marks the executor failed, every step checks
that mark first, and collectives run under a timeout so a step already waiting
on a dead peer fails too.
"""

from __future__ import annotations

import datetime
import logging
import multiprocessing as mp
import os
import socket
import threading
from multiprocessing.connection import wait

import torch
import torch.distributed as dist

from pagoda.engine.config import EngineConfig
from pagoda.engine.distributed import init_tensor_parallel
from pagoda.engine.model_config import ModelConfig
from pagoda.engine.step_inputs import StepInputs

logger = logging.getLogger(__name__)

_STEP, _STOP = 0, 1
# A step longer than this on any rank is treated as a dead peer.
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=float(os.environ.get("PAGODA_TP_TIMEOUT_S", "300")))


class WorkerDiedError(RuntimeError):
    """A tensor-parallel worker exited; the engine cannot continue."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _device_for_rank(config: EngineConfig, rank: int) -> torch.device:
    """A rank's device: its GPU on its own node (ranks are numbered node by node)."""
    device = config.resolve_device()
    return torch.device("cuda", rank % config.ranks_per_node) if device.type == "cuda" else device


def _rendezvous(config: EngineConfig) -> str:
    """Where the ranks meet: node 0's address over several nodes, else a free loopback port."""
    if config.nnodes > 1:
        return f"tcp://{config.master_addr}:{config.master_port}"
    return f"tcp://127.0.0.1:{_free_port()}"


def _init_process(rank: int, config: EngineConfig, address: str, device: torch.device) -> dist.ProcessGroup:
    """Joins the default (compute) group and returns the gloo control group."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        # A node's ranks share its cores: oversubscribing them makes every rank slower.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // config.ranks_per_node))
    dist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo",
        init_method=address,
        rank=rank,
        world_size=config.tensor_parallel_size,
        timeout=COLLECTIVE_TIMEOUT,
    )
    return dist.new_group(backend="gloo", timeout=COLLECTIVE_TIMEOUT)


def _broadcast_step(payload: torch.Tensor | None, control: dist.ProcessGroup) -> torch.Tensor | None:
    """Rank 0 sends (kind, length) then the payload; other ranks receive. None means stop."""
    if dist.get_rank() == 0:
        header = torch.tensor([_STOP, 0] if payload is None else [_STEP, payload.numel()], dtype=torch.long)
    else:
        header = torch.zeros(2, dtype=torch.long)
    dist.broadcast(header, src=0, group=control)
    if int(header[0]) == _STOP:
        return None
    if dist.get_rank() != 0:
        payload = torch.empty(int(header[1]), dtype=torch.long)
    dist.broadcast(payload, src=0, group=control)
    return payload


def _share_configs(control: dist.ProcessGroup, configs: tuple[EngineConfig, ModelConfig] | None = None,
                   ) -> tuple[EngineConfig, ModelConfig]:
    """Rank 0's engine and model settings, on every rank, which then records its place by them: a
    headless node's own flags say only where it stands (model directory, topology); block size,
    dtype, context length, expert parallelism and the rest must be the engine's, or the ranks' KV
    caches and shards would not line up."""
    shared = list(configs) if configs is not None else [None, None]
    dist.broadcast_object_list(shared, src=0, group=control)
    config = shared[0]
    init_tensor_parallel(dist.get_rank(), config.tensor_parallel_size, None, config.enable_expert_parallel)
    return config, shared[1]


def _worker_main(rank: int, address: str, config: EngineConfig, model_config: ModelConfig) -> None:
    from pagoda.engine.model_runner import ModelRunner

    device = _device_for_rank(config, rank)
    control = _init_process(rank, config, address, device)
    config, model_config = _share_configs(control)
    runner = ModelRunner(config, model_config, eos_token_ids=(), device=device)
    while (payload := _broadcast_step(None, control)) is not None:
        inputs = StepInputs.unpack(payload)
        if inputs.image_rows:
            width = model_config.vision.feature_width(model_config.hidden_size)
            inputs.image_features = torch.empty(len(inputs.image_rows), width)
            dist.broadcast(inputs.image_features, src=0, group=control)
        if inputs.lora_loads:
            runner.load_loras(inputs.lora_loads)
        runner.forward_logits(inputs)
    dist.destroy_process_group()


def _spawn_workers(ranks: range, address: str, config: EngineConfig,
                   model_config: ModelConfig) -> list[mp.process.BaseProcess]:
    """This node's other ranks, as worker processes."""
    local = config.ranks_per_node
    device = config.resolve_device()
    if device.type == "cuda" and torch.cuda.device_count() < local:
        raise ValueError(f"{local} ranks per node need {local} GPUs, found {torch.cuda.device_count()}")
    ctx = mp.get_context("spawn")
    workers = [ctx.Process(target=_worker_main, args=(r, address, config, model_config), name=f"pagoda-tp-{r}",
                           daemon=True) for r in ranks]
    for w in workers:
        w.start()
    return workers


def run_headless_node(config: EngineConfig, model_config: ModelConfig) -> int:
    """Node `config.node_rank` (> 0) of a multi-node engine: its ranks run the steps node 0 sends
    until it stops them. Returns the exit status: 0 after a stop, 1 when a rank failed."""
    if config.node_rank == 0:
        raise ValueError("node 0 runs the engine itself; --headless is for node_rank >= 1")
    first = config.node_rank * config.ranks_per_node
    address = _rendezvous(config)
    workers = _spawn_workers(range(first + 1, first + config.ranks_per_node), address, config, model_config)
    try:
        _worker_main(first, address, config, model_config)
    except RuntimeError as exc:  # a collective failed: a peer or node 0 went away
        logger.error("rank %d stopped: %s", first, exc)
        for w in workers:
            w.kill()
        return 1
    for w in workers:
        w.join(timeout=30)
    return 0 if all(w.exitcode == 0 for w in workers) else 1


class TensorParallelGroup:
    """Spawns and supervises this node's ranks 1..L-1 and makes this process rank 0; over several
    nodes the others join from their headless processes."""

    def __init__(self, config: EngineConfig, model_config: ModelConfig) -> None:
        if config.node_rank != 0:
            raise ValueError("only node 0 runs the engine: start the other nodes with --headless")
        size = config.tensor_parallel_size
        self.size = size
        self.device = _device_for_rank(config, 0)
        self.failure: str | None = None
        self._closed = False
        address = _rendezvous(config)
        self.workers = _spawn_workers(range(1, config.ranks_per_node), address, config, model_config)
        self.control = _init_process(0, config, address, self.device)
        _share_configs(self.control, (config, model_config))
        self._monitor = threading.Thread(target=self._watch, name="pagoda-tp-monitor", daemon=True)
        self._monitor.start()

    def _watch(self) -> None:
        sentinels = {w.sentinel: w for w in self.workers}
        if not sentinels:
            return  # one rank per node: other nodes' failures surface in the collectives
        ready = wait(list(sentinels))
        if self._closed:
            return
        dead = sentinels[ready[0]]
        self.failure = f"tensor-parallel worker {dead.name} exited with code {dead.exitcode}"
        logger.error("%s; the engine cannot continue", self.failure)

    def check_health(self) -> None:
        if self.failure is not None:
            raise WorkerDiedError(self.failure)

    def broadcast(self, inputs: StepInputs) -> None:
        self.check_health()
        try:
            _broadcast_step(inputs.pack(), self.control)
            if inputs.image_rows:  # the driver's vision tower ran; the workers take its features
                dist.broadcast(inputs.image_features.float().cpu().contiguous(), src=0, group=self.control)
        except RuntimeError as exc:
            raise WorkerDiedError(self.failure or f"tensor-parallel broadcast failed: {exc}") from exc

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.failure is None:
            try:
                _broadcast_step(None, self.control)
            except RuntimeError:
                pass
        for w in self.workers:
            w.join(timeout=30)
            if w.is_alive():
                w.kill()
        if dist.is_initialized():
            dist.destroy_process_group()
        init_tensor_parallel(0, 1, None)
