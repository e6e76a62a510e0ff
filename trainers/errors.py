"""How `sngm-train` reports an error once under horovodrun: shared by the command line and
`sngm-train plan` (one module both import, so neither imports the other)."""

import sys
import time

from keras_sngm_trainers import config

# Under horovodrun the first worker to exit gets the others terminated. A rank other than 0 that
# meets an error waits this long before it exits 2, so that rank 0's message reaches the user
# before horovodrun stops rank 0 (rank 0's exit ends the wait). A rank still alive after it met
# an error rank 0 did not, and prints its own.
ERROR_GRACE_SECONDS = 10


def print_error(text):
    """`text` on stderr from rank 0 at once; from another rank only if rank 0 has not ended
    the job within ERROR_GRACE_SECONDS, prefixed with the rank."""
    rank = config.rank_from_env()
    if rank != 0:
        time.sleep(ERROR_GRACE_SECONDS)
        text = f"[rank {rank}] {text}"
    print(text, file=sys.stderr, flush=True)


def error(message):
    """`sngm-train: error: MESSAGE` on stderr, once under horovodrun (rank 0's; every rank
    exits 2); returns 2."""
    print_error(f"sngm-train: error: {message}")
    return 2
