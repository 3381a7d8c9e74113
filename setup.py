"""tfnas: neural architecture search (DARTS, random search, PetriDish) for TensorFlow and Keras 3.

TensorFlow comes as an extra so that one package serves every machine:
- `pip install -e .[cpu]`  installs tensorflow-cpu (274 MB wheel): laptops, CI, CPU servers.
- `pip install -e .[gpu]`  installs tensorflow[and-cuda]: a machine with an NVIDIA GPU.
- `pip install -e .`       installs no TensorFlow: Colab and TPU runtimes, which already have `tensorflow`
                           (adding tensorflow-cpu there would put a second copy beside it).
"""
from setuptools import find_packages, setup

TF = ">=2.20,<2.22"

setup(
    name="tfnas",
    version="0.1.0",
    description="Neural architecture search for TensorFlow and Keras: search, evaluate, export, serve.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["tfnas", "tfnas.*"]),
    install_requires=[
        "keras>=3.10,<4",
        "tensorflow-datasets>=4.9",
        # tfds needs it to prepare datasets but does not declare it (tfds 4.9.10).
        "importlib_resources",
        "tensorboard>=2.20,<2.22",
        # Generated code is gencode 5.29.0 (tfnas/protogen.py): it refuses runtimes older than 5.29.
        "protobuf>=5.29.0,<8",
        "click>=8.1",
        "pyyaml>=6",
        # Ships the built-in dataset (UCI handwritten digits) inside its wheel: no download.
        "scikit-learn>=1.3",
        # Draws cells (`tfnas draw`, TensorBoard images) without a system binary.
        "pillow>=9",
        "numpy>=1.26",
    ],
    extras_require={
        "cpu": [f"tensorflow-cpu{TF}"],
        "gpu": [f"tensorflow[and-cuda]{TF}"],
        "test": [f"tensorflow-cpu{TF}", "pytest>=7", "nbformat>=5.9"],
    },
    entry_points={"console_scripts": ["tfnas=tfnas.cli:main"]},
)
