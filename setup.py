"""seqboat-fairseq: SeqBoat (Sparse Modular Activation) as a fairseq --user-dir plugin."""
from setuptools import find_packages, setup

setup(
    name="seqboat-fairseq",
    version="0.1.0",
    description="SeqBoat (Ren et al., NeurIPS 2023) for stock fairseq 0.12 on Python 3.11",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["seqboat_fairseq", "seqboat_fairseq.*"]),
    install_requires=[
        # CPU build of torch from the local wheel; an unpinned torch pulls a multi-GB CUDA build.
        "torch==2.13.0",
        # fairseq main-branch build with a prebuilt cp311 wheel (README: "Why ve-fairseq").
        "ve-fairseq==0.12.3",
        # fairseq still calls np.compat, removed in NumPy 2.
        "numpy<2",
        "tensorboardX",
        "sentencepiece",
        # LRA: Pathfinder PNGs (data prep) and the activation-analysis figures
        "pillow",
        "matplotlib",
    ],
    extras_require={"test": ["pytest", "pytest-timeout"]},
)
