"""How files and records are dealt to workers, shared by the Criteo and ImageNet readers.

By file when there are enough files for an even share, else every worker reads every
file and keeps runs of `batch_size` records in turn (run t to worker t % size),
restarting at each file. Either way each record goes to exactly one worker.
"""


def shard_files(files, rank, size):
    """(files this worker reads, "file" or "line"): by file when there are enough files
    for an even share (a multiple of the workers, or at least 4 per worker), else
    every worker reads every file and keeps its lines."""
    if size > 1 and len(files) >= size and (len(files) % size == 0 or len(files) >= 4 * size):
        return list(files[rank::size]), "file"
    return list(files), "line"


def rows_of_worker(file_lines, rank, size, batch_size):
    """Rows worker `rank` gets from files of `file_lines` lines each (`dataset`'s rule)."""
    files = list(range(len(file_lines)))
    own, by = shard_files(files, rank, size)
    if by == "file":
        return sum(file_lines[i] for i in own)
    total = 0
    for n in file_lines:  # runs of batch_size lines dealt in turn, restarting at each file
        cycle = batch_size * size
        total += (n // cycle) * batch_size + min(max(n % cycle - rank * batch_size, 0), batch_size)
    return total


def my_lines(index, batch_size, rank, size, by):
    """Mask of the (0-based) row indices of one file that worker `rank` keeps."""
    import tensorflow as tf

    if by == "line" and size > 1:
        return tf.equal((index // batch_size) % size, rank)  # run t of batch_size rows -> rank t % size
    return tf.ones_like(index, tf.bool)
