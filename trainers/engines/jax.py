"""The JAX engine: Keras' own distribution API (`keras.distribution`) on the JAX backend.

One process per host feeds all its local devices (`keras.distribution.DataParallel`):
the batch it reads is split over them, and the gradient the optimizer sees is already
the mean over every device of every process (XLA's collectives inside the compiled train
step), so the optimizer needs no wrapper for the mean: k micro-batches per update are
summed by `keras_sngm_trainers.accumulation.Accumulation` (k a variable: `--batch-size
auto` changes it without a new compiled step), and float16's loss scale decides on the
update's mean gradient, the same on every process.

Several processes (on one host or many) join through `jax.distributed.initialize`, given
Keras' own variables (`sngm-train launch` sets them):

    KERAS_DISTRIBUTION_JOB_ADDRESSES   the coordinator, host:port (process 0 listens there)
    KERAS_DISTRIBUTION_NUM_PROCESSES   the number of processes
    KERAS_DISTRIBUTION_PROCESS_ID      this one, 0 .. N-1

or, under SLURM's `srun`, from SLURM's own variables. A coordinator that cannot be
reached, or a process count that does not match, fails after `SNGM_CONNECT_TIMEOUT`
seconds (default 120) instead of waiting for ever. On CPU the cross-process collectives
use Gloo.
"""

import contextlib
import os
import pickle
import sys
import threading

import keras
import numpy as np

name = "jax"
# Putting host values into the run's variables is a collective here (JAX checks that every process
# passes the same value): every process loads a checkpoint, and does whatever device work rank 0 does.
every_process_loads = True
ADDRESS, PROCESSES, PROCESS_ID = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
                                  "KERAS_DISTRIBUTION_PROCESS_ID")


def connect_timeout():
    """Seconds to wait for every process to join (`SNGM_CONNECT_TIMEOUT`, default 120)."""
    text = os.environ.get("SNGM_CONNECT_TIMEOUT", "120")
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"SNGM_CONNECT_TIMEOUT must be a whole number of seconds >= 1. Received: {text!r}")
    return int(text)


def cluster():
    """(coordinator address, processes, process id) from Keras' variables; None when they
    are unset (one process, or SLURM's variables). ValueError naming a bad value."""
    if PROCESSES not in os.environ:
        return None
    values = {k: os.environ.get(k, "") for k in (ADDRESS, PROCESSES, PROCESS_ID)}
    if not (values[PROCESSES].isdigit() and int(values[PROCESSES]) >= 1):
        raise ValueError(f"{PROCESSES} must be a whole number >= 1. Received: {values[PROCESSES]!r}")
    n = int(values[PROCESSES])
    if n == 1:
        return None
    if not (values[PROCESS_ID].isdigit() and int(values[PROCESS_ID]) < n):
        raise ValueError(f"{PROCESS_ID} must be a whole number in 0..{n - 1} ({PROCESSES}={n}). "
                         f"Received: {values[PROCESS_ID]!r}")
    address = values[ADDRESS].split(",")[0].strip()  # (Keras' list of all jobs: the first is the coordinator)
    if ":" not in address:
        raise ValueError(f"{ADDRESS} must name the coordinator as host:port. Received: {values[ADDRESS]!r}")
    return address, n, int(values[PROCESS_ID])


def init(cfg):
    """Joins the run's processes (before any computation) and sets Keras' distribution: data
    parallel over every device of every process. Returns the threads setting (XLA sizes its
    own pools)."""
    import jax

    if cfg.deterministic:  # (XLA on CPU is deterministic already)
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_gpu_deterministic_ops=true").strip()
    found = cluster()
    slurm = found is None and int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_PROCID" in os.environ
    if (found or slurm) and not _initialized():
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # (the CPU's; GPUs use NCCL)
        kwargs = dict(coordinator_address=found[0], num_processes=found[1], process_id=found[2]) if found else {}
        where = f"the coordinator {found[0]} with {found[1]} processes" if found else "SLURM's job"
        seconds = connect_timeout()
        # JAX aborts the process (SIGABRT, no Python exception) when its own timeout passes: ours comes first.
        watchdog = threading.Timer(seconds, _give_up, (f"the JAX engine could not join {where} within {seconds} s "
                                                       "(SNGM_CONNECT_TIMEOUT): is every process started, with the "
                                                       "same KERAS_DISTRIBUTION_* values?",))
        watchdog.daemon = True
        watchdog.start()
        try:
            jax.distributed.initialize(initialization_timeout=seconds + 60, **kwargs)
        except Exception as e:  # (jax raises RuntimeError or its own XlaRuntimeError)
            raise ConnectionError(f"the JAX engine could not join {where}: {str(e).splitlines()[0]}") from None
        finally:
            watchdog.cancel()
    tf = sys.modules.get("tensorflow")
    if tf is not None:  # its tf.data pipelines run on the CPU: the GPUs' memory is JAX's
        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:
            pass  # (TensorFlow already initialized its devices)
    if jax.device_count() > 1:
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices(),
                                                                            auto_shard_dataset=False))
    # (One device in all: no distribution, as a plain fit. Over a one-device mesh Keras leaves the variables
    # uncommitted, and the train step compiled 3 times: first call, committed outputs, the metrics' reset.)
    return cfg.threads


# What a collective says when a peer process is gone (gloo on CPU, NCCL on GPU, JAX's coordination service).
LOST_PEER_SIGNS = ("Connection reset by peer", "Connection closed by peer", "Gloo all-reduce failed", "Gloo all-gather failed",
                   "Socket closed", "Broken pipe", "NCCL", "heartbeat", "coordination service", "task has been restarted")


def lost_peer(error):
    """Whether `error`, raised out of training, is a collective that failed because a peer
    process is gone (JAX raises its runtime error, with gloo's or NCCL's words)."""
    import jax

    runtime = getattr(jax.errors, "JaxRuntimeError", None) or getattr(jax.errors, "XlaRuntimeError", ())
    return size() > 1 and isinstance(error, runtime) and any(s.lower() in str(error).lower() for s in LOST_PEER_SIGNS)


def _give_up(message):
    from keras_sngm_trainers.errors import error

    error(message)
    os._exit(2)  # (the main thread is blocked inside JAX's connect)


def _initialized():
    import jax

    check = getattr(jax.distributed, "is_initialized", None)
    return bool(check and check())


def rank():
    import jax

    return jax.process_index()


def size():
    import jax

    return jax.process_count()


def local_replicas():
    import jax

    return jax.local_device_count()


def _gather(array):
    """Every process's `array` (same shape and dtype on all), stacked in rank order."""
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(np.asarray(array), tiled=False))


def allreduce_mean(values, name=None):
    if size() == 1:
        return [float(v) for v in values]
    return [float(v) for v in _gather(np.asarray(values, np.float64)).mean(axis=0)]


def allreduce_max(values, name=None):
    if size() == 1:
        return [float(v) for v in values]
    return [float(v) for v in _gather(np.asarray(values, np.float64)).max(axis=0)]


def allgather_object(obj):
    if size() == 1:
        return [obj]
    data = np.frombuffer(pickle.dumps(obj), np.uint8)
    lengths = _gather(np.asarray([data.size], np.int64))[:, 0]
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[:data.size] = data
    rows = _gather(padded)
    return [pickle.loads(row[:n].tobytes()) for row, n in zip(rows, lengths)]


def broadcast_object(obj, root_rank=0):
    return allgather_object(obj)[root_rank] if size() > 1 else obj


def agreed(obj, what):
    """Raises RuntimeError unless every process holds the same `obj`; returns the number of
    processes that agreed."""
    seen = allgather_object(obj)
    differing = [r for r, other in enumerate(seen) if other != seen[0]]
    if differing:
        raise RuntimeError(f"the processes disagree on {what}: ranks {differing} differ from rank 0")
    return len(seen)


def smallest_gradient(micro_batch):
    return size() * local_replicas() * micro_batch  # a train step's gradient is already every device's mean


def optimizer(inner, cfg, k, auto):
    """`inner` itself (the devices' mean is taken inside the compiled step) or, with k > 1
    micro-batches per update or an adaptive batch, `inner` inside our accumulation
    (`keras_sngm_trainers.accumulation`: k may change between `fit` calls, the noise scale
    is measured, and float16's loss scale decides on the update's mean gradient)."""
    if k == 1 and not auto:
        return inner  # (float16: Keras' LossScaleOptimizer, which compile adds, decides per update)
    from keras_sngm_trainers.accumulation import Accumulation

    return Accumulation(inner, size() * local_replicas() * cfg.micro_batch, accumulation_steps=k,
                        dynamic_loss_scale=cfg.precision == "mixed_float16")


def compile(model, opt, task, cfg):
    # The whole train step, the update included, is one XLA program on every device.
    model.compile(optimizer=opt, loss=task.loss, metrics=task.metrics(), jit_compile=True,
                  steps_per_execution=cfg.steps_per_execution)
    if getattr(opt, "dynamic_loss_scale", False) and model.optimizer is not opt:
        model.optimizer = opt  # (Keras wrapped it for float16: the accumulation keeps the loss scale itself)


@contextlib.contextmanager
def chief_io():
    """Where rank 0 alone writes a checkpoint. Keras' saving builds reference objects, whose
    variables would be put on every process's devices (a collective the others never join):
    here they are built without the distribution."""
    distribution = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(distribution)


def start_callbacks():
    return []  # every process built the same weights from the seed, and loads the same checkpoint


def epoch_callbacks():
    return []  # the metrics are updated inside the compiled step, on the global batch
