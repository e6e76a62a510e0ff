"""The engines: how the processes of one run share it.

The driver (`keras_sngm_trainers.engine`) and its callbacks ask the engine in use the
same few questions, never which engine it is. An engine is a module that answers:

    init(cfg) -> threads          join the run's processes (before any computation)
    rank(), size()                this process and the number of processes
    local_replicas()              the data-parallel replicas this process feeds (its devices)
    allreduce_mean(values, name)  floats averaged over the processes (Python floats back)
    allreduce_max(values, name)   the largest over the processes: a verdict any one can raise
    allgather_object(obj)         every process's `obj`, in rank order
    broadcast_object(obj)         rank 0's `obj`, on every process
    agreed(obj, what)             raises unless every process holds the same `obj`
    smallest_gradient(micro_batch) the examples of the smallest gradient the optimizer sees
                                  (the gradient noise scale compares it with the update's)
    optimizer(inner, cfg, k, auto) the optimizer the model is compiled with: it steps `inner`
                                  on the mean gradient of the global batch (k micro-batches
                                  per replica per update)
    compile(model, opt, task, cfg)
    chief_io()                    a context around what rank 0 alone writes (checkpoints)
    every_process_loads           whether every process reads a checkpoint (else rank 0,
                                  and the first `fit` broadcasts its weights)
    lost_peer(error)              whether an error out of training is a collective that failed
                                  because a peer process is gone (then: one line, exit 5)
    start_callbacks(), epoch_callbacks()
                                  what the first `fit` needs first (rank 0's weights to all),
                                  and what turns each process's epoch logs into the run's

`horovod` (TensorFlow and Horovod, one process per device) and `jax` (Keras'
distribution API on the JAX backend, one process per host) are the two. The model of
this shape is Keras' own `keras.distribution`, one interface over a module per backend.
"""

import importlib

ENGINES = ("horovod", "jax")
_current = []


def select(name):
    """Makes engine `name` the one `current()` returns (the driver calls it first); returns it."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}: one of {', '.join(ENGINES)}")
    module = importlib.import_module(f"keras_sngm_trainers.engines.{name}")
    _current[:] = [module]
    return module


def current():
    """The engine of this process: the one selected, else Horovod's (the default)."""
    return _current[0] if _current else select("horovod")
