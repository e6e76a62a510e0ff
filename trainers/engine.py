"""The training driver shared by every trainer: plain `model.fit`, with the engine in use
(`keras_sngm_trainers.engines`: Horovod or JAX) asked for the processes, the gradient mean
and the agreements between processes."""

import dataclasses
import json
import math
import os
import warnings

import keras

from keras_sngm_trainers import (batch_adapter, checkpoint, config, engines, preemption, recipes, resume, segments,
                                 tb_layout, timing)
from keras_sngm_trainers.callbacks import DiagnosticsLogger, EpochLogger, ProgressLogger
from keras_sngm_trainers.config import check_batch
from keras_sngm_trainers.guard import Diverged, DivergenceGuard


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
    returns (its history, None, None). A signal of `cfg.stop_signals` ends training at
    the next update's end with a checkpoint: `keras_sngm_trainers.preemption.Preempted` is raised.
    """
    config.validate(cfg, task_cls.name)
    # Caught from now on. Not with --elastic: there a preempted worker is one that leaves, and the others go on.
    stop = preemption.StopRequest([] if cfg.elastic else config.stop_signals(cfg.stop_signals), say=cfg.verbose)
    try:
        return _train(cfg, task_cls, stop)
    finally:
        stop.close()


def _train(cfg, task_cls, stop):
    eng = engines.select(cfg.engine)
    threads = eng.init(cfg)
    stop.take_back()  # (a runtime that joined the processes may have put its own handlers in place)
    rank = eng.rank()
    if cfg.resume and finished(cfg.logdir, cfg.epochs):
        if rank == 0 and cfg.verbose:
            print(f"{cfg.logdir} already finished all {cfg.epochs} epochs: nothing to do (its results are kept)", flush=True)
        with open(os.path.join(cfg.logdir, "history.json")) as f:
            return json.load(f)["history"], None, None
    size, local = eng.size(), eng.local_replicas()  # processes, and the devices each one feeds
    workers = size * local  # the data-parallel replicas
    auto = config.adaptive(cfg)
    if auto:  # the real worker count (validate read horovodrun's environment)
        batch_adapter.check(cfg.batch_min, cfg.batch_max, workers, cfg.micro_batch)
    batch = cfg.batch_min if auto else cfg.batch_size  # the batch of the first update
    k = check_batch(batch, workers, cfg.micro_batch, config.workers_text(size, local))
    task = task_cls(cfg)
    feed = local * cfg.micro_batch  # what this process reads per micro-batch (its devices' micro-batches)
    if hasattr(task, "updates_per_epoch"):  # streamed data: what every process's shard can fill
        updates_per_epoch = task.updates_per_epoch(batch, feed, size)
    else:
        updates_per_epoch = task.num_train // batch
    if cfg.steps_per_epoch > updates_per_epoch >= 1:  # an epoch is a pass over the data: resume and elastic rely on it
        raise ValueError(f"--steps-per-epoch {cfg.steps_per_epoch} is more than the {updates_per_epoch} updates one "
                         f"pass over the training data gives at --batch-size {batch}")
    updates_per_epoch = cfg.steps_per_epoch or updates_per_epoch
    if updates_per_epoch < 1:
        raise ValueError(f"--{'batch-min' if auto else 'batch-size'} {batch} is larger than the {task.num_train} "
                         f"training examples.")
    task.micro_steps_per_epoch = updates_per_epoch * k  # an epoch, in micro-batches per worker
    lr = cfg.lr * (workers if cfg.scale_lr else 1)  # linear scaling with the number of workers
    schedule = recipes.schedule(cfg.schedule, lr, updates_per_epoch * cfg.epochs, cfg.power,
                                int(cfg.warmup_epochs * updates_per_epoch),
                                step_boundaries=[e / cfg.epochs for e in cfg.step_epochs] or (0.5, 0.75),
                                updates_per_epoch=updates_per_epoch if cfg.lr_per_epoch else 0,
                                warmup_start=cfg.warmup_start)
    if auto:  # the same schedule, followed in examples (updates of --batch-min), times the lr gain
        from keras_sngm_trainers import lr_scaling  # (TensorFlow)

        schedule = lr_scaling.ExamplesSchedule(schedule, batch, config.lr_gain(cfg.lr_scaling, cfg.optimizer),
                                               cfg.optimizer)
    inner = recipes.optimizer(cfg.optimizer, schedule, cfg.momentum, cfg.weight_decay, cfg.trust_coefficient,
                              diagnostics_every=cfg.diagnostics_every)
    if k % cfg.steps_per_execution:
        raise ValueError(f"--steps-per-execution {cfg.steps_per_execution} must divide the {k} micro-batches of each "
                         f"update (--batch-size {cfg.batch_size} / ({config.workers_text(size, local)} x --micro-batch "
                         f"{cfg.micro_batch})): the logs and the divergence guard act at every update's end")
    opt = eng.optimizer(inner, cfg, k, auto)  # the mean gradient of the global batch, once per update
    adapter = None
    if auto:
        schedule.bind(opt)
        adapter = batch_adapter.BatchAdapter(cfg.batch_min, cfg.batch_max, workers * cfg.micro_batch, cfg.adapt_every,
                                             cfg.adapt_factor, task.micro_steps_per_epoch)

    keras.utils.set_random_seed(cfg.seed)
    keras.mixed_precision.set_global_policy(cfg.precision)  # the weights stay float32 under either mixed policy
    model = task.model()
    if cfg.init_weights:  # (every process: the same start everywhere)
        model.load_weights(cfg.init_weights)
    eng.compile(model, opt, task, cfg)
    opt = model.optimizer  # (Keras' LossScaleOptimizer around it, where the engine lets Keras add one)
    opt.build(model.trainable_variables)

    run_dir = cfg.logdir
    first_epoch, start, rounds, past, epoch_metrics, adapted = 0, 0, 0, {}, None, None
    if cfg.resume:
        first_epoch, start, rounds, past, epoch_metrics, adapted = resume.restore(cfg, model, opt, rank, size,
                                                                                  updates_per_epoch, workers)
    if adapted:
        adapter.load(adapted)
    resolved = {**dataclasses.asdict(cfg), "task": task.name, "workers": workers, "processes": size,
                "micro_batches_per_update": k,
                "updates_per_epoch": updates_per_epoch, "effective_lr": lr, "parameters": model.count_params(),
                "first_epoch": first_epoch, "first_update_in_epoch": start, "threads_per_worker": threads,
                **_allreduce_bytes(model, cfg.compression), **task.describe()}
    if auto:
        resolved.update(lr_scaling=schedule.gain, micro_batches_per_epoch=task.micro_steps_per_epoch,
                        micro_batches_per_update="varies with the batch", updates_per_epoch="varies with the batch",
                        updates_per_epoch_at_batch_min=updates_per_epoch)
    if rank == 0:
        os.makedirs(run_dir, exist_ok=True)
        saved = os.path.join(run_dir, "config.json")
        if cfg.resume and os.path.isfile(saved):  # what --resume changed (--epochs, logging), run after run
            with open(saved) as f:
                resolved["changed_on_resume"] = resume.changes(json.load(f), resolved)
        checkpoint.write_json(saved, resolved)
        if cfg.verbose:
            other = ({f.name for f in config.fields_of("deepfm" if task.name == "resnet" else "resnet")}
                     - {f.name for f in config.fields_of(task.name)})  # the other task's own flags
            shown = {k: v for k, v in resolved.items() if k not in other}  # the recipe first, as in --help
            print("sngm-train configuration:\n" + "\n".join(f"  {k:>24}: {v}" for k, v in shown.items()), flush=True)

    if cfg.elastic:  # HVD: workers may leave and join; see trainers/elastic.py
        return _train_elastic(cfg, task, model, inner, updates_per_epoch, first_epoch, resolved, past, schedule)

    progress = segments.Progress(cfg.micro_batch, workers)
    timed = {k: resolved[k] for k in ("task", "optimizer", "workers", "micro_batch", "threads_per_worker", "precision",
                                      "xla", "compression", "allreduce_bytes")}
    every_segment = [timing.UpdateTimer(run_dir, progress, write=rank == 0, facts=timed),  # first: the planner's times
                     ProgressLogger(run_dir, progress, cfg.log_every, write=rank == 0, schedule=schedule,
                                    total_examples=updates_per_epoch * batch * cfg.epochs,
                                    total_updates=0 if auto else updates_per_epoch * cfg.epochs,
                                    show=cfg.verbose and rank == 0,
                                    epoch_lines=cfg.epochs if auto and cfg.verbose and rank == 0 else 0)]
    if cfg.diagnostics_every:
        every_segment.append(DiagnosticsLogger(run_dir, progress, cfg.diagnostics_every, write=rank == 0,
                                               schedule=schedule))
    every_segment.append(DivergenceGuard(progress))  # after metric averaging, before the checkpoint
    updates_before = [adapter.updates_done() if adapter else 0]  # before the segment in flight

    def saved_state(updates_in_segment):
        """The adapter's state, with the segment in flight up to the checkpoint."""
        if adapter is None:
            return {}
        return {"batch_adapter": adapter.state([updates_before[0], updates_in_segment, progress.batch,
                                                progress.examples_before])}

    every_segment.append(stop.agreement(progress))  # all ranks stop at the same update
    every_segment.append(checkpoint.CheckpointCallback(  # on every rank (metric sums); rank 0 writes
        run_dir, progress, cfg.ckpt_every, cfg.keep, {"config": resolved}, past, every_steps=cfg.ckpt_every_steps,
        every_minutes=cfg.ckpt_every_minutes, state=saved_state, write=rank == 0, stop=stop))
    if rank == 0:  # only rank 0 writes TensorBoard
        tb_layout.write(os.path.join(run_dir, "train"))
    averaging = eng.epoch_callbacks()  # the run's epoch logs, before the guard and the checkpoint
    epoch_logger = []
    if rank == 0:
        # Epoch scalars only: Keras' batch-level points count micro-batches, ours
        # (ProgressLogger, DiagnosticsLogger) count updates, on one step axis.
        held_out = cfg.validation_split or cfg.val_data or cfg.dataset == "imagenet"  # else the test set
        epoch_logger.append(EpochLogger(run_dir, "validation" if held_out else "test"))
    end_epoch = min(cfg.epochs, first_epoch + cfg.stop_after) if cfg.stop_after else cfg.epochs
    seen, ran = {}, []  # the epoch logs of this invocation's complete epochs; its segments
    stream = segments.Stream(task, rank, size, feed)
    evaluation = []

    def eval_data():  # built once: its cache is kept from one fit call to the next
        if not evaluation:
            evaluation.append(task.eval_dataset())
        return evaluation[0]

    carry = [epoch_metrics if (start or rounds) else None]  # the running metric sums of an epoch entered mid-way

    def examples_seen():
        return int(opt.examples.numpy()) if auto else int(opt.iterations) * batch

    def run_segment(seg):
        """One `fit` call; returns the examples seen after it."""
        progress.begin(seg, examples_seen())
        if auto:
            opt.set_accumulation_steps(seg.k)
        callbacks = (eng.start_callbacks() if not ran else []) + every_segment  # once, at the start
        if carry[0] is not None:
            callbacks.append(checkpoint.RestoreEpochMetrics(carry[0]))
        if seg.closes:
            callbacks = averaging + callbacks + epoch_logger
        callbacks.append(stop.exit(progress))  # last: after the checkpoint and the epoch's logs
        ran.append(seg)
        history = model.fit(
            stream.at(seg.epoch, seg.start),  # sharded by rank
            epochs=seg.epochs, initial_epoch=seg.epoch, steps_per_epoch=seg.steps,
            validation_data=eval_data() if seg.closes else None, callbacks=callbacks,
            shuffle=False,  # the datasets shuffle themselves, reproducibly
            verbose=2 if cfg.verbose and rank == 0 and not auto else 0)  # (auto: ProgressLogger's epoch lines)
        if seg.closes:
            for key, values in history.history.items():
                seen.setdefault(key, []).extend(values)
        carry[0] = None if seg.closes else [v.numpy().tolist() for v in checkpoint.metric_variables(model)]
        updates_before[0] += seg.steps // seg.k * (seg.epochs - seg.epoch)
        return examples_seen()

    try:
        if auto:
            adapter.plan(first_epoch, rounds, start, end_epoch, cfg.stop_after_updates, run_segment, opt.noise_scale)
        else:
            for seg in segments.fixed(first_epoch, start, end_epoch, updates_per_epoch, k, cfg.stop_after_updates):
                run_segment(seg)
    except Diverged as e:
        current = getattr(getattr(model, "history", None), "history", {}) if ran and ran[-1].closes else {}
        now = {key: seen.get(key, []) + current.get(key, []) for key in set(seen) | set(current)}
        done = {key: past.get(key, [])[:first_epoch] + now.get(key, []) for key in set(past) | set(now)}
        if rank == 0:  # the run ends here for good: the study ranks it last
            _write_results(run_dir, done or {"loss": [math.nan]}, first_epoch,
                           {"diverged": True, "reason": str(e), "epochs": cfg.epochs,
                            "epochs_done": len(done.get("loss", [])), **_counts(opt, adapter, batch)}, adapter)
        raise
    agreeing = {}
    if auto:  # the decisions come from allreduced estimates, so every worker took the same ones
        agreeing = {"workers_agreeing_on_batches": eng.agreed(adapter.state(), "the adaptive batch's decisions")}
    if getattr(task, "bad_rows", None) is not None and rank == 0:
        what = "malformed rows (--skip-bad-rows" if task.name == "deepfm" else "undecodable images (--skip-bad-images"
        print(f"skipped {task.bad_rows.count} {what}; each is dropped every time it is read)", flush=True)
    complete = not ran or ran[-1].closes
    epochs_done = first_epoch + len(seen.get("loss", []))
    final = {k: v[-1] for k, v in seen.items() if k.startswith("val_")}
    test = task.test_dataset()
    if not complete:  # stopped within an epoch (--stop-after-updates): its checkpoint holds the position
        final["stopped_at"] = {"epoch": epochs_done + 1,
                               "update_in_epoch": ran[-1].start_updates + ran[-1].steps // ran[-1].k}
    elif test is not None:  # tuned on validation data: the test set is looked at once, at the end
        if epochs_done == cfg.epochs:
            final.update({f"test_{k}": float(v) for k, v in model.evaluate(test, return_dict=True, verbose=0).items()})
    elif final:
        final.update({"test_" + k[4:]: v for k, v in list(final.items())})  # the per-epoch evaluation was the test set
    full = {key: past.get(key, [])[:first_epoch] + seen.get(key, []) for key in set(past) | set(seen)}
    if rank == 0:
        _write_results(run_dir, full, first_epoch, {**final, "epochs": cfg.epochs, "epochs_done": epochs_done,
                                                    **_counts(opt, adapter, batch), **agreeing}, adapter)
        if cfg.verbose:
            shown = {k: v for k, v in final.items() if k.startswith("test_")}
            if shown:
                print("results: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items())
                      + f" (after {epochs_done} epochs; in {os.path.join(run_dir, 'final.json')})", flush=True)
    return full, model, task


def _counts(opt, adapter, batch):
    """The updates (allreduce rounds) and examples of the whole run, and with an adaptive
    batch its trajectory."""
    if adapter is None:
        return {"updates": int(opt.iterations), "examples": int(opt.iterations) * batch}
    return {"updates": adapter.updates_done(), "examples": int(opt.examples.numpy()),
            "batch_trajectory": adapter.decisions, "final_batch_size": adapter.batch}


def _train_elastic(cfg, task, model, inner, updates_per_epoch, first_epoch, resolved, past, schedule):
    from keras_sngm_trainers import elastic  # HVD

    def compile_fn(optimizer):
        engines.current().compile(model, optimizer, task, cfg)

    updates = elastic.train(cfg, task, model, inner, compile_fn, updates_per_epoch, cfg.logdir, {"config": resolved},
                            first_update=first_epoch * updates_per_epoch, schedule=schedule)
    final = {"epochs": cfg.epochs, "epochs_done": updates // updates_per_epoch, "elastic": True}
    evaluation = task.test_dataset() or task.eval_dataset()
    if evaluation is not None:  # every worker evaluates the same unsharded data
        final.update({f"test_{k}": float(v) for k, v in model.evaluate(evaluation, return_dict=True, verbose=0).items()})
    if engines.current().rank() == 0:
        _write_results(cfg.logdir, past, first_epoch, final)
    return past, model, task


def _allreduce_bytes(model, compression):
    """The bytes of gradients each update's allreduce moves per worker (float32 weights;
    fp16 compression halves them), for the planner."""
    params = sum(int(math.prod(v.shape)) for v in model.trainable_variables)
    return {"trainable_parameters": params, "allreduce_bytes": params * (2 if compression == "fp16" else 4)}


def _write_results(run_dir, history, resumed_at, final, adapter=None):
    record = {"first_epoch": 0, "resumed_at": resumed_at, "history": history}
    if adapter is not None:  # every update's batch: [first update, updates, global batch, examples before]
        record["batch_runs"] = adapter.runs
    checkpoint.write_json(os.path.join(run_dir, "history.json"), record)  # every epoch, across resumes
    checkpoint.write_json(os.path.join(run_dir, "final.json"), final)  # written last: marks a finished run
