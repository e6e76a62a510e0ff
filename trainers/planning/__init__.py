"""`sngm-train plan`: time to accuracy for N workers and batch B, from measured runs.

- `model`: the equations (update time, ring allreduce, updates to a target) and their fits;
- `measured`: what a run directory holds (update times, gradient bytes, noise scale, updates
  to a target);
- `allreduce`: `--measure-allreduce`, timing Horovod's allreduce by message size;
- `cli`: the command, its tables, JSON and plot.
"""
