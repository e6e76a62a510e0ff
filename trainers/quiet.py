"""TensorFlow's import banners, left out of stderr; everything else it prints kept.

Importing TensorFlow 2.21 prints, before its logging is set up (so TF_CPP_MIN_LOG_LEVEL
cannot silence them), absl's "All log messages before absl::InitializeLog()" notice, the
oneDNN notice and the CPU-instructions notice: six lines per process, twelve under
`horovodrun -np 2`. `banners_filtered()` sends file descriptor 2 to a temporary file for
the duration of the import and writes back every line that is not one of those.
"""

import contextlib
import os
import re
import sys
import tempfile

BANNERS = [re.compile(p) for p in (
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR\s*$",
    r"^I0000 [\d:. ]+\d+ port\.cc:\d+\] oneDNN custom operations are on\.",
    r"^I0000 [\d:. ]+\d+ cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized to use available CPU",
    r"^To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags\.\s*$",
)]


def is_banner(line):
    return any(p.search(line) for p in BANNERS)


@contextlib.contextmanager
def banners_filtered():
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(True) if not is_banner(line)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()
