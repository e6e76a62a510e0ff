"""keras-sngm: SNGM optimizers for Keras 3 and Horovod large-batch trainers."""
from setuptools import find_packages, setup

setup(
    name="keras-sngm",
    version="0.2.0",
    description=(
        "Stochastic Normalized Gradient Descent with Momentum (SNGM), block-wise "
        "SNGM and LARS as Keras 3 optimizers, with Horovod large-batch trainers."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    license_expression="Apache-2.0",  # PEP 639 License-Expression (setuptools>=77)
    license_files=["LICENSE"],
    # The trainers live in the folder trainers/ but install as `keras_sngm_trainers`: a
    # generic top-level `trainers` would shadow (or be shadowed by) a user's own module.
    packages=find_packages(include=["keras_sngm", "keras_sngm.*"])
    + ["keras_sngm_trainers"] + [f"keras_sngm_trainers.{p}" for p in find_packages("trainers")],
    package_dir={"keras_sngm_trainers": "trainers"},
    # Exactly the Keras range the tests prove (the optimizer tests run on 3.12.0 and on
    # 3.15.1, on the TensorFlow, JAX and PyTorch backends); keras_sngm checks it at import.
    install_requires=["keras>=3.12,<3.16", "numpy"],
    extras_require={
        # Any one backend. TensorFlow: the optimizers' XLA update, and the trainers.
        "tensorflow": ["tensorflow>=2.20", "tensorboard"],
        # (tensorboard: keras_sngm.callbacks.SNGMDiagnostics writes its event files)
        "jax": ["jax>=0.6", "tensorboard"],
        "torch": ["torch>=2.6", "tensorboard"],
        # Horovod must be built against the installed TensorFlow: see tools/install_horovod.sh.
        "horovod": ["horovod==0.28.1"],
        "datasets": ["tensorflow-datasets>=4.9", "importlib_resources"],  # TFDS imports it undeclared
        "study": ["matplotlib"],
        "dev": ["pytest", "nbclient", "nbformat", "ipykernel", "matplotlib", "psutil"],
    },
    entry_points={"console_scripts": ["sngm-train=keras_sngm_trainers.cli:main"]},
)
