"""The training driver shared by every trainer: plain `model.fit`, with the Horovod
layer (`trainers.distributed`) around the optimizer and in the callbacks."""

import dataclasses
import json
import math
import os
import warnings

import keras

from trainers import checkpoint, config, distributed, recipes, xla_step
from trainers.callbacks import DiagnosticsLogger, ProgressLogger
from trainers.guard import Diverged, DivergenceGuard


def check_batch(global_batch, workers, micro_batch):
    """Returns micro-batches per update; the global batch must split evenly."""
    if global_batch <= 0 or micro_batch <= 0:
        raise ValueError(f"--batch-size and --micro-batch must be positive. Received: {global_batch}, {micro_batch}")
    if global_batch % (workers * micro_batch):
        raise ValueError(
            f"--batch-size {global_batch} is not divisible by workers x micro-batch = {workers} x {micro_batch} "
            f"= {workers * micro_batch}: choose a global batch that is a multiple of {workers * micro_batch}.")
    return global_batch // (workers * micro_batch)


def finished(run_dir, epochs):
    """The results of a run that already trained all `epochs`, else None."""
    path = os.path.join(run_dir, "final.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        final = json.load(f)
    return final if final.get("epochs_done", 0) >= epochs else None


# The training streams repeat forever; Keras says this of every finite evaluation set whose
# length it cannot know in advance (streamed Criteo and ImageNet files), which is expected.
warnings.filterwarnings("ignore", message="Your input ran out of data")


def train(cfg, task_cls):
    """Trains `task_cls(cfg)` as `cfg` says; returns (history dict, model, task).

    With `cfg.resume` on a run that already finished, nothing is trained or rewritten:
    returns (its history, None, None).
    """
    config.validate(cfg, task_cls.name)
    distributed.init()
    rank = distributed.rank()
    if cfg.resume and finished(cfg.logdir, cfg.epochs):
        if rank == 0 and cfg.verbose:
            print(f"{cfg.logdir} already finished all {cfg.epochs} epochs: nothing to do (its results are kept)", flush=True)
        with open(os.path.join(cfg.logdir, "history.json")) as f:
            return json.load(f)["history"], None, None
    if cfg.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    size = distributed.size()
    k = check_batch(cfg.batch_size, size, cfg.micro_batch)
    task = task_cls(cfg)
    if hasattr(task, "updates_per_epoch"):  # streamed data: what every worker's shard can fill
        updates_per_epoch = task.updates_per_epoch(cfg.batch_size, cfg.micro_batch, size)
    else:
        updates_per_epoch = task.num_train // cfg.batch_size
    if cfg.steps_per_epoch > updates_per_epoch >= 1:  # an epoch is a pass over the data: resume and elastic rely on it
        raise ValueError(f"--steps-per-epoch {cfg.steps_per_epoch} is more than the {updates_per_epoch} updates one "
                         f"pass over the training data gives at --batch-size {cfg.batch_size}")
    updates_per_epoch = cfg.steps_per_epoch or updates_per_epoch
    if updates_per_epoch < 1:
        raise ValueError(f"--batch-size {cfg.batch_size} is larger than the {task.num_train} training examples.")
    task.micro_steps_per_epoch = updates_per_epoch * k
    lr = cfg.lr * (size if cfg.scale_lr else 1)  # linear scaling with the number of workers
    schedule = recipes.schedule(cfg.schedule, lr, updates_per_epoch * cfg.epochs, cfg.power,
                                int(cfg.warmup_epochs * updates_per_epoch),
                                step_boundaries=[e / cfg.epochs for e in cfg.step_epochs] or (0.5, 0.75),
                                updates_per_epoch=updates_per_epoch if cfg.lr_per_epoch else 0,
                                warmup_start=cfg.warmup_start)
    inner = recipes.optimizer(cfg.optimizer, schedule, cfg.momentum, cfg.weight_decay, cfg.trust_coefficient,
                              diagnostics_every=cfg.diagnostics_every)
    if k % cfg.steps_per_execution:
        raise ValueError(f"--steps-per-execution {cfg.steps_per_execution} must divide the {k} micro-batches of each "
                         f"update (--batch-size {cfg.batch_size} / ({size} workers x --micro-batch {cfg.micro_batch})): "
                         f"the logs and the divergence guard act at every update's end")
    opt = distributed.DistributedOptimizer(inner, accumulation_steps=k, compression=cfg.compression,  # HVD averaging
                                           micro_batch_size=cfg.micro_batch,
                                           skip_nonfinite=cfg.on_nonfinite == "skip" and cfg.optimizer in recipes.APPLY_NONFINITE,
                                           dynamic_loss_scale=cfg.precision == "mixed_float16")

    keras.utils.set_random_seed(cfg.seed)
    keras.mixed_precision.set_global_policy(cfg.precision)  # the weights stay float32 under either mixed policy
    model = task.model()
    _compile(model, opt, task, cfg)
    opt.build(model.trainable_variables)

    run_dir = cfg.logdir
    first_epoch, start, past, epoch_metrics = 0, 0, {}, None
    if cfg.resume:
        path = checkpoint.latest(run_dir) if rank == 0 else None
        if rank == 0 and path:
            state = checkpoint.restore(path, model, opt)
            first_epoch, start, past = state["epoch"], state.get("step_in_epoch", 0), state.get("history", {})
            epoch_metrics = state.get("epoch_metrics")
        elif rank == 0 and cfg.verbose:
            print(f"--resume: no checkpoint in {run_dir}: starting from scratch", flush=True)
        # HVD: every rank resumes at rank 0's position, and with rank 0's running metric sums of the
        # epoch (so an epoch resumed mid-way logs rank 0's partial sums on every rank)
        first_epoch, start, epoch_metrics = distributed.broadcast_object((first_epoch, start, epoch_metrics))
        if start and cfg.elastic:
            raise ValueError(f"{path} was saved within an epoch (update {start}); --elastic resumes from epoch ends "
                             f"only: resume without --elastic to the epoch's end first")
    resolved = {**dataclasses.asdict(cfg), "task": task.name, "workers": size, "micro_batches_per_update": k,
                "updates_per_epoch": updates_per_epoch, "effective_lr": lr, "parameters": model.count_params(),
                "first_epoch": first_epoch, "first_update_in_epoch": start, **task.describe()}
    if rank == 0:
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "config.json"), "w") as f:
            json.dump(resolved, f, indent=1, default=str)
        if cfg.verbose:
            other = {f.name for f in config.fields_of("deepfm" if task.name == "resnet" else "resnet")}
            shown = {k: v for k, v in resolved.items() if k not in other}
            print("sngm-train configuration:\n" + "\n".join(f"  {k:>24}: {v}" for k, v in shown.items()), flush=True)

    if cfg.elastic:  # HVD: workers may leave and join; see trainers/elastic.py
        return _train_elastic(cfg, task, model, inner, updates_per_epoch, first_epoch, resolved, past)

    callbacks = [distributed.BroadcastCallback(), distributed.MetricAverageCallback(),  # HVD
                 ProgressLogger(run_dir, cfg.batch_size, k, cfg.log_every, write=rank == 0, schedule=schedule,
                                total_updates=updates_per_epoch * cfg.epochs, show=cfg.verbose and rank == 0)]
    if cfg.diagnostics_every:
        callbacks.append(DiagnosticsLogger(run_dir, cfg.batch_size, cfg.diagnostics_every, write=rank == 0,
                                           schedule=schedule))
    callbacks.append(DivergenceGuard(k))  # after metric averaging, before the checkpoint
    if start:
        callbacks.append(checkpoint.RestoreEpochMetrics(epoch_metrics))
    ckpt = None
    if rank == 0:  # HVD: only rank 0 writes checkpoints and TensorBoard
        ckpt = checkpoint.CheckpointCallback(run_dir, cfg.ckpt_every, cfg.keep, {"config": resolved}, past,
                                             micro_batches=k, updates_per_epoch=updates_per_epoch,
                                             every_steps=cfg.ckpt_every_steps, every_minutes=cfg.ckpt_every_minutes)
        callbacks += [ckpt,
                      # Epoch scalars only: Keras' batch-level points count micro-batches, ours
                      # (ProgressLogger, DiagnosticsLogger) count updates, on one step axis.
                      keras.callbacks.TensorBoard(run_dir, update_freq="epoch", write_graph=False)]
    end_epoch = min(cfg.epochs, first_epoch + cfg.stop_after) if cfg.stop_after else cfg.epochs
    plan = segments(first_epoch, start, end_epoch, updates_per_epoch, cfg.stop_after_updates)
    seen, complete = {}, True  # the epoch logs of this invocation's complete epochs
    try:
        for begin, stop, first_update, last_update in plan:
            complete = last_update == updates_per_epoch
            if ckpt:
                ckpt.segment(first_update, last_update)
            history = model.fit(
                task.train_dataset(begin, rank, size, cfg.micro_batch, start=first_update * k),  # HVD: sharded by rank
                epochs=stop, initial_epoch=begin, steps_per_epoch=(last_update - first_update) * k,
                validation_data=task.eval_dataset() if complete else None, callbacks=callbacks,
                shuffle=False,  # the datasets shuffle themselves, reproducibly
                verbose=(2 if cfg.verbose else 0) if rank == 0 else 0)
            if complete:
                for key, values in history.history.items():
                    seen.setdefault(key, []).extend(values)
    except Diverged as e:
        current = getattr(getattr(model, "history", None), "history", {}) if complete else {}  # Keras' History
        now = {key: seen.get(key, []) + current.get(key, []) for key in set(seen) | set(current)}
        done = {key: past.get(key, [])[:first_epoch] + now.get(key, []) for key in set(past) | set(now)}
        if rank == 0:  # the run ends here for good: the study ranks it last
            _write_results(run_dir, done or {"loss": [math.nan]}, first_epoch,
                           {"diverged": True, "reason": str(e), "epochs": cfg.epochs,
                            "epochs_done": len(done.get("loss", []))})
        raise
    if getattr(task, "bad_rows", None) is not None and rank == 0:
        what = "malformed rows (--skip-bad-rows" if task.name == "deepfm" else "undecodable images (--skip-bad-images"
        print(f"skipped {task.bad_rows.count} {what}; each is dropped every time it is read)", flush=True)
    epochs_done = first_epoch + len(seen.get("loss", []))
    final = {k: v[-1] for k, v in seen.items() if k.startswith("val_")}
    test = task.test_dataset()
    if not complete:  # stopped within an epoch (--stop-after-updates): its checkpoint holds the position
        final["stopped_at"] = {"epoch": epochs_done + 1, "update_in_epoch": plan[-1][3]}
    elif test is not None:  # tuned on validation data: the test set is looked at once, at the end
        if epochs_done == cfg.epochs:
            final.update({f"test_{k}": float(v) for k, v in model.evaluate(test, return_dict=True, verbose=0).items()})
    elif final:
        final.update({"test_" + k[4:]: v for k, v in list(final.items())})  # the per-epoch evaluation was the test set
    full = {key: past.get(key, [])[:first_epoch] + seen.get(key, []) for key in set(past) | set(seen)}
    if rank == 0:
        _write_results(run_dir, full, first_epoch, {**final, "epochs": cfg.epochs, "epochs_done": epochs_done})
    return full, model, task


def segments(first_epoch, start, end_epoch, updates_per_epoch, max_updates=0):
    """The `fit` calls that train from update `start` of epoch `first_epoch` to the end of
    epoch `end_epoch`, or for `max_updates` updates: (initial_epoch, epochs, first update of
    the first epoch, last update of the last epoch). A call either covers whole epochs or
    one epoch, entered or left mid-way."""
    budget = max_updates or math.inf
    plan, e = [], first_epoch
    if start and e < end_epoch:
        n = min(updates_per_epoch - start, budget)
        plan.append((e, e + 1, start, start + n))
        budget -= n
        if start + n < updates_per_epoch:
            return plan
        e += 1
    whole = min(end_epoch - e, budget // updates_per_epoch)
    if whole > 0:
        plan.append((e, e + whole, 0, updates_per_epoch))
        e, budget = e + whole, budget - whole * updates_per_epoch
    if e < end_epoch and 0 < budget < updates_per_epoch:
        plan.append((e, e + 1, 0, budget))
    return plan


def _train_elastic(cfg, task, model, inner, updates_per_epoch, first_epoch, resolved, past):
    from trainers import elastic  # HVD

    def compile_fn(optimizer):
        _compile(model, optimizer, task, cfg)

    updates = elastic.train(cfg, task, model, inner, compile_fn, updates_per_epoch, cfg.logdir, {"config": resolved},
                            first_update=first_epoch * updates_per_epoch)
    final = {"epochs": cfg.epochs, "epochs_done": updates // updates_per_epoch, "elastic": True}
    evaluation = task.test_dataset() or task.eval_dataset()
    if evaluation is not None:  # every worker evaluates the same unsharded data
        final.update({f"test_{k}": float(v) for k, v in model.evaluate(evaluation, return_dict=True, verbose=0).items()})
    if distributed.rank() == 0:
        _write_results(cfg.logdir, past, first_epoch, final)
    return past, model, task


def _compile(model, opt, task, cfg):
    # No whole-model XLA: Horovod's ops are not XLA ops; the optimizers compile their own update.
    model.compile(optimizer=opt, loss=task.loss, metrics=task.metrics(), jit_compile=False,
                  steps_per_execution=cfg.steps_per_execution)
    if model.optimizer is not opt:
        # Keras wraps a mixed_float16 model's optimizer in its LossScaleOptimizer, which checks for overflow
        # before the allreduce, on each worker's own gradient: workers could disagree on a skip. Our wrapper
        # scales instead and decides on the averaged gradient (dynamic_loss_scale).
        model.optimizer = opt
    if cfg.xla:
        xla_step.compile_forward_backward(model)


def _write_results(run_dir, history, resumed_at, final):
    with open(os.path.join(run_dir, "history.json"), "w") as f:  # every epoch, across resumes
        json.dump({"first_epoch": 0, "resumed_at": resumed_at, "history": history}, f, indent=1)
    with open(os.path.join(run_dir, "final.json"), "w") as f:  # written last: marks a finished run
        json.dump(final, f, indent=1)
