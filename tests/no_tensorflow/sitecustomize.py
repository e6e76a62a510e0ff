"""On PYTHONPATH, this makes every Python process start as on a GPU host without
TensorFlow (the `make bench-gpu BACKEND=jax|torch SMOKE=1` tests): `import tensorflow` fails.

It also lets `torchvision.models` load where torchvision's C extension cannot: the only
torchvision wheels this machine's registries carry are CUDA builds, whose extension does
not load against the CPU build of PyTorch here. The models are pure Python, and the bench's
anchor uses nothing else, so the package is entered without its extension."""

import importlib.metadata
import importlib.util
import sys
import types

sys.modules["tensorflow"] = None

_spec = importlib.util.find_spec("torchvision")
if _spec is not None:
    try:
        import torchvision  # noqa: F401
    except (OSError, RuntimeError):
        for _name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[_name]
        _stub = types.ModuleType("torchvision")
        _stub.__path__, _stub.__spec__ = list(_spec.submodule_search_locations), _spec
        _stub.__version__ = (importlib.metadata.version("torchvision")
                             + " (models only: its C extension does not load here)")
        sys.modules["torchvision"] = _stub
