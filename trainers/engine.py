"""The training driver shared by every trainer: plain `model.fit`, with the engine in use
(`keras_sngm_trainers.engines`: Horovod or JAX) asked for the processes, the gradient mean
and the agreements between processes."""

import dataclasses
import json
import math
import os
import warnings

import keras

from keras_sngm_trainers import (batch_adapter, checkpoint, config, engines, heartbeat, lr_scaling, preemption, recipes,
                                 resume, segments, tb_layout, timing)
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
    cfg = dataclasses.replace(cfg, engine=config.engine_of(cfg.engine))  # (--engine auto, or a Config made in code)
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
    # --micro-batch 0: the paper's rule over the engine's real workers (processes x devices)
    cfg = dataclasses.replace(cfg, micro_batch=config.micro_batch_of(cfg, task_cls.name, eng.size() * eng.local_replicas()))
    stop.take_back()  # (a runtime that joined the processes may have put its own handlers in place)
    rank = eng.rank()
    if cfg.resume and finished(cfg.logdir, cfg.epochs):
        if rank == 0 and cfg.verbose:
            print(f"{cfg.logdir} already finished all {cfg.epochs} epochs: nothing to do (its results are kept)", flush=True)
        with open(os.path.join(cfg.logdir, "history.json")) as f:
            return json.load(f)["history"], None, None
    plan = _plan(cfg, task_cls, eng)
    model, opt, inner, adapter = _build(cfg, plan, eng)
    start = _restore(cfg, plan, model, opt, adapter, rank) if cfg.resume else Start()
    resolved = _record(cfg, plan, model, start, threads, rank)
    if cfg.elastic:  # HVD: workers may leave and join; see trainers/elastic.py
        return _train_elastic(cfg, plan.task, model, inner, plan.updates_per_epoch, start.first_epoch, resolved,
                              start.past, plan.schedule)
    return _Fit(cfg, plan, model, opt, adapter, start, resolved, stop, eng, rank).run()


@dataclasses.dataclass
class Plan:
    """What the flags and the engine's processes make of a run, before any model exists."""
    task: object
    processes: int
    devices: int  # per process
    feed: int  # examples this process reads per micro-batch (its devices' micro-batches)
    batch: int  # the global batch of the first update
    k: int  # micro-batches per update, per device
    updates_per_epoch: int
    lr: float
    schedule: object
    auto: bool  # --batch-size auto

    @property
    def workers(self):
        """The data-parallel replicas: processes x devices."""
        return self.processes * self.devices


@dataclasses.dataclass
class Start:
    """Where this invocation starts (a resumed checkpoint's position, else the beginning)."""
    first_epoch: int = 0
    start: int = 0  # updates done in first_epoch
    rounds: int = 0  # micro-batches done in first_epoch, per worker
    past: dict = dataclasses.field(default_factory=dict)  # the epoch logs before
    epoch_metrics: list = None  # this rank's running metric sums of an epoch entered mid-way


def _plan(cfg, task_cls, eng):
    """The global batch split over the engine's workers, the epoch in updates, the learning
    rate and its schedule; the task (its data is read here). ValueError naming the flag."""
    size, local = eng.size(), eng.local_replicas()  # processes, and the devices each one feeds
    workers = size * local
    auto = config.adaptive(cfg)
    if auto:  # the real worker count (validate read horovodrun's environment)
        batch_adapter.check(cfg.batch_min, cfg.batch_max, workers, cfg.micro_batch,
                            eng.smallest_gradient(cfg.micro_batch))
    batch = cfg.batch_min if auto else cfg.batch_size  # the batch of the first update
    k = check_batch(batch, workers, cfg.micro_batch, config.workers_text(size, local))
    if k % cfg.steps_per_execution:
        raise ValueError(f"--steps-per-execution {cfg.steps_per_execution} must divide the {k} micro-batches of each "
                         f"update (--batch-size {cfg.batch_size} / ({config.workers_text(size, local)} x --micro-batch "
                         f"{cfg.micro_batch})): the logs and the divergence guard act at every update's end")
    task = task_cls(cfg)
    feed = local * cfg.micro_batch
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
        schedule = lr_scaling.ExamplesSchedule(schedule, batch, config.lr_gain(cfg.lr_scaling, cfg.optimizer),
                                               cfg.optimizer)
    return Plan(task, size, local, feed, batch, k, updates_per_epoch, lr, schedule, auto)


def _build(cfg, plan, eng):
    """The model, compiled with the engine's optimizer around the recipe's; returns (model,
    the optimizer it steps, the recipe's optimizer, the batch adapter or None)."""
    inner = recipes.optimizer(cfg.optimizer, plan.schedule, cfg.momentum, cfg.weight_decay, cfg.trust_coefficient,
                              diagnostics_every=cfg.diagnostics_every)
    opt = eng.optimizer(inner, cfg, plan.k, plan.auto)  # the mean gradient of the global batch, once per update
    adapter = None
    if plan.auto:
        plan.schedule.bind(opt)
        adapter = batch_adapter.BatchAdapter(cfg.batch_min, cfg.batch_max, plan.workers * cfg.micro_batch,
                                             cfg.adapt_every, cfg.adapt_factor, plan.task.micro_steps_per_epoch)
    keras.utils.set_random_seed(cfg.seed)
    keras.mixed_precision.set_global_policy(cfg.precision)  # the weights stay float32 under either mixed policy
    model = plan.task.model()
    if cfg.init_weights:  # (every process: the same start everywhere)
        model.load_weights(cfg.init_weights)
    eng.compile(model, opt, plan.task, cfg)
    opt = model.optimizer  # (Keras' LossScaleOptimizer around it, where the engine lets Keras add one)
    opt.build(model.trainable_variables)
    return model, opt, inner, adapter


def _restore(cfg, plan, model, opt, adapter, rank):
    """--resume: the newest intact checkpoint into the model, the optimizer and the adapter."""
    first_epoch, start, rounds, past, epoch_metrics, adapted = resume.restore(
        cfg, model, opt, rank, plan.processes, plan.updates_per_epoch, plan.workers)
    if adapted:
        adapter.load(adapted)
    return Start(first_epoch, start, rounds, past, epoch_metrics)


def _record(cfg, plan, model, start, threads, rank):
    """The resolved configuration: written to config.json (with what --resume changed) and
    printed by rank 0; returned."""
    task = plan.task
    resolved = {**dataclasses.asdict(cfg), "task": task.name, "workers": plan.workers, "processes": plan.processes,
                "micro_batches_per_update": plan.k, "updates_per_epoch": plan.updates_per_epoch,
                "effective_lr": plan.lr, "parameters": model.count_params(), "first_epoch": start.first_epoch,
                "first_update_in_epoch": start.start, "threads_per_worker": threads,
                **_allreduce_bytes(model, cfg.compression), **task.describe()}
    if plan.auto:
        resolved.update(lr_scaling=plan.schedule.gain, micro_batches_per_epoch=task.micro_steps_per_epoch,
                        micro_batches_per_update="varies with the batch", updates_per_epoch="varies with the batch",
                        updates_per_epoch_at_batch_min=plan.updates_per_epoch)
    if rank == 0:
        os.makedirs(cfg.logdir, exist_ok=True)
        saved = os.path.join(cfg.logdir, "config.json")
        if cfg.resume and os.path.isfile(saved):  # what --resume changed (--epochs, logging), run after run
            with open(saved) as f:
                resolved["changed_on_resume"] = resume.changes(json.load(f), resolved)
        checkpoint.write_json(saved, resolved)
        if cfg.verbose:
            other = ({f.name for f in config.fields_of("deepfm" if task.name == "resnet" else "resnet")}
                     - {f.name for f in config.fields_of(task.name)})  # the other task's own flags
            shown = {k: v for k, v in resolved.items() if k not in other}  # the recipe first, as in --help
            print("sngm-train configuration:\n" + "\n".join(f"  {k:>24}: {v}" for k, v in shown.items()), flush=True)
    return resolved


class _Fit:
    """The invocation's `model.fit` calls, segment by segment (trainers/segments.py), with
    the callbacks that log, guard, agree on a stop and checkpoint; then its results."""

    def __init__(self, cfg, plan, model, opt, adapter, start, resolved, stop, eng, rank):
        self.cfg, self.plan, self.model, self.opt, self.adapter = cfg, plan, model, opt, adapter
        self.start, self.stop, self.eng, self.rank = start, stop, eng, rank
        self.progress = segments.Progress(cfg.micro_batch, plan.workers)
        self.updates_before = adapter.updates_done() if adapter else 0  # before the segment in flight
        self.every_segment = self._callbacks(resolved)
        self.averaging = eng.epoch_callbacks()  # the run's epoch logs, before the guard and the checkpoint
        self.epoch_logger = []
        if rank == 0:
            # Epoch scalars only: Keras' batch-level points count micro-batches, ours
            # (ProgressLogger, DiagnosticsLogger) count updates, on one step axis.
            held_out = cfg.validation_split or cfg.val_data or cfg.dataset == "imagenet"  # else the test set
            self.epoch_logger.append(EpochLogger(cfg.logdir, "validation" if held_out else "test"))
        self.seen, self.ran = {}, []  # the epoch logs of this invocation's complete epochs; its segments
        self.stream = segments.Stream(plan.task, rank, plan.processes, plan.feed)
        self.evaluation = None  # built once: its cache is kept from one fit call to the next
        # the running metric sums of an epoch entered mid-way
        self.carry = start.epoch_metrics if (start.start or start.rounds) else None

    def _callbacks(self, resolved):
        """What every `fit` call gets, in order."""
        cfg, plan, rank, run_dir = self.cfg, self.plan, self.rank, self.cfg.logdir
        timed = {k: resolved[k] for k in ("task", "optimizer", "workers", "micro_batch", "threads_per_worker",
                                          "precision", "xla", "compression", "allreduce_bytes")}
        callbacks = [timing.UpdateTimer(run_dir, self.progress, write=rank == 0, facts=timed),  # first: the planner's
                     ProgressLogger(run_dir, self.progress, cfg.log_every, write=rank == 0, schedule=plan.schedule,
                                    total_examples=plan.updates_per_epoch * plan.batch * cfg.epochs,
                                    total_updates=0 if plan.auto else plan.updates_per_epoch * cfg.epochs,
                                    show=cfg.verbose and rank == 0,
                                    epoch_lines=cfg.epochs if plan.auto and cfg.verbose and rank == 0 else 0)]
        if cfg.diagnostics_every:
            callbacks.append(DiagnosticsLogger(run_dir, self.progress, cfg.diagnostics_every, write=rank == 0,
                                               schedule=plan.schedule))
        callbacks.append(heartbeat.Heartbeat(run_dir, self.progress, cfg.hang_timeout, write=rank == 0))
        callbacks.append(DivergenceGuard(self.progress))  # after metric averaging, before the checkpoint
        callbacks.append(self.stop.agreement(self.progress))  # all ranks stop at the same update
        callbacks.append(checkpoint.CheckpointCallback(  # on every rank (metric sums); rank 0 writes
            run_dir, self.progress, cfg.ckpt_every, cfg.keep, {"config": resolved}, self.start.past,
            every_steps=cfg.ckpt_every_steps, every_minutes=cfg.ckpt_every_minutes, state=self.saved_state,
            write=rank == 0, stop=self.stop))
        if rank == 0:  # only rank 0 writes TensorBoard
            tb_layout.write(os.path.join(run_dir, "train"))
        return callbacks

    def saved_state(self, updates_in_segment):
        """The adapter's state, with the segment in flight up to the checkpoint."""
        if self.adapter is None:
            return {}
        return {"batch_adapter": self.adapter.state([self.updates_before, updates_in_segment, self.progress.batch,
                                                     self.progress.examples_before])}

    def eval_data(self):
        if self.evaluation is None:
            self.evaluation = self.plan.task.eval_dataset()
        return self.evaluation

    def examples_seen(self):
        return self.opt.examples_seen() if self.plan.auto else int(self.opt.iterations) * self.plan.batch

    def segment(self, seg):
        """One `fit` call; returns the examples seen after it."""
        cfg, model = self.cfg, self.model
        self.progress.begin(seg, self.examples_seen())
        if self.plan.auto:
            self.opt.set_accumulation_steps(seg.k)
        callbacks = (self.eng.start_callbacks() if not self.ran else []) + self.every_segment  # once, at the start
        if self.carry is not None:
            callbacks.append(checkpoint.RestoreEpochMetrics(self.carry))
        if seg.closes:
            callbacks = self.averaging + callbacks + self.epoch_logger
        callbacks.append(self.stop.exit(self.progress))  # last: after the checkpoint and the epoch's logs
        self.ran.append(seg)
        history = model.fit(
            self.stream.at(seg.epoch, seg.start),  # sharded by rank
            epochs=seg.epochs, initial_epoch=seg.epoch, steps_per_epoch=seg.steps,
            validation_data=self.eval_data() if seg.closes else None, callbacks=callbacks,
            shuffle=False,  # the datasets shuffle themselves, reproducibly
            verbose=2 if cfg.verbose and self.rank == 0 and not self.plan.auto else 0)  # (auto: ProgressLogger's)
        if seg.closes:
            for key, values in history.history.items():
                self.seen.setdefault(key, []).extend(values)
        self.carry = None if seg.closes else [v.numpy().tolist() for v in checkpoint.metric_variables(model)]
        self.updates_before += seg.steps // seg.k * (seg.epochs - seg.epoch)
        return self.examples_seen()

    def run(self):
        """Trains to the invocation's end; returns (history dict, model, task)."""
        cfg, s = self.cfg, self.start
        end_epoch = min(cfg.epochs, s.first_epoch + cfg.stop_after) if cfg.stop_after else cfg.epochs
        try:
            if self.plan.auto:
                self.adapter.plan(s.first_epoch, s.rounds, s.start, end_epoch, cfg.stop_after_updates, self.segment,
                                  self.opt.noise_scale)
            else:
                for seg in segments.fixed(s.first_epoch, s.start, end_epoch, self.plan.updates_per_epoch, self.plan.k,
                                          cfg.stop_after_updates):
                    self.segment(seg)
        except Diverged as e:
            self._diverged(e)
            raise
        return self._finish()

    def _diverged(self, e):
        """The results of a run that ends here for good: the study ranks it last."""
        past, first_epoch = self.start.past, self.start.first_epoch
        ran = self.ran
        current = getattr(getattr(self.model, "history", None), "history", {}) if ran and ran[-1].closes else {}
        now = {key: self.seen.get(key, []) + current.get(key, []) for key in set(self.seen) | set(current)}
        done = {key: past.get(key, [])[:first_epoch] + now.get(key, []) for key in set(past) | set(now)}
        if self.rank == 0:
            _write_results(self.cfg.logdir, done or {"loss": [math.nan]}, first_epoch,
                           {"diverged": True, "reason": str(e), "epochs": self.cfg.epochs,
                            "epochs_done": len(done.get("loss", [])),
                            **_counts(self.opt, self.adapter, self.plan.batch)}, self.adapter)

    def _finish(self):
        """The test results (once, at the end), final.json and history.json."""
        cfg, task, seen, ran, rank = self.cfg, self.plan.task, self.seen, self.ran, self.rank
        past, first_epoch = self.start.past, self.start.first_epoch
        agreeing = {}
        if self.plan.auto:  # the decisions come from allreduced estimates, so every worker took the same ones
            agreeing = {"workers_agreeing_on_batches": self.eng.agreed(self.adapter.state(),
                                                                       "the adaptive batch's decisions")}
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
                final.update({f"test_{k}": float(v)
                              for k, v in self.model.evaluate(test, return_dict=True, verbose=0).items()})
        elif final:
            final.update({"test_" + k[4:]: v for k, v in list(final.items())})  # the per-epoch evaluation was the test set
        full = {key: past.get(key, [])[:first_epoch] + seen.get(key, []) for key in set(past) | set(seen)}
        if rank == 0:
            _write_results(cfg.logdir, full, first_epoch,
                           {**final, "epochs": cfg.epochs, "epochs_done": epochs_done,
                            **_counts(self.opt, self.adapter, self.plan.batch), **agreeing}, self.adapter)
            if cfg.verbose:
                shown = {k: v for k, v in final.items() if k.startswith("test_")}
                if shown:
                    print("results: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items())
                          + f" (after {epochs_done} epochs; in {os.path.join(cfg.logdir, 'final.json')})", flush=True)
        return full, self.model, task


def _counts(opt, adapter, batch):
    """The updates (allreduce rounds) and examples of the whole run, and with an adaptive
    batch its trajectory."""
    if adapter is None:
        return {"updates": int(opt.iterations), "examples": int(opt.iterations) * batch}
    return {"updates": adapter.updates_done(), "examples": opt.examples_seen(),
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
