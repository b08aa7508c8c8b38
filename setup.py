"""seqboat-fairseq: SeqBoat (Sparse Modular Activation) as a fairseq --user-dir plugin.

install_requires holds the ranges the plugin supports, so that `pip install -e .` into an existing
environment (a GPU build of torch, a fairseq built from source) adds the few small packages it
lacks and replaces nothing. The exact stack that the README and CI install is `constraints.txt`:
    pip install -c constraints.txt -e ".[test,fairseq]"

fairseq is deliberately NOT in install_requires. Three PyPI distributions provide the module
`fairseq` (`fairseq`, whose 0.12.2 does not import on Python 3.11; `ve-fairseq` and
`fairseq-fixed`, rebuilds of fairseq's main branch), and researchers often run their own build
from source. pip only knows distribution names: requiring any one of them would install a second
copy over a user's own fairseq (same module, different distribution), which is exactly what
must not happen. So the plugin checks at import time that `import fairseq` works and is 0.12
(seqboat_fairseq/fairseq_check.py: one ImportError saying how to install one), and the extra
`.[fairseq]` installs ve-fairseq (prebuilt cp311 wheel, ~20 s; fairseq-fixed compiles for ~4.5 min)
for those who have none.
"""
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
        # The oldest torch with every API the plugin uses: add_safe_globals with (class, name)
        # pairs (2.5; torch.nn.RMSNorm is 2.4), RAdam(decoupled_weight_decay=True) (2.1).
        # CI runs the 2.13.0 of constraints.txt. A range, never a pin: a pin would replace a
        # user's own (e.g. CUDA) torch.
        "torch>=2.5,<3",
        # fairseq 0.12 still calls np.compat, removed in NumPy 2.
        "numpy>=1.21,<2",
        # --tensorboard-logdir logging
        "tensorboardX>=2.1",
        # subword (sentencepiece) corpora in data_prep/
        "sentencepiece>=0.1.99",
        # LRA: Pathfinder PNGs (data prep) and the activation-analysis figures
        "pillow>=9",
        "matplotlib>=3.5",
        # no fairseq distribution here: see the module docstring
    ],
    extras_require={
        "fairseq": ["ve-fairseq>=0.12.3,<0.13"],
        "test": ["pytest>=7", "pytest-timeout>=2", "pytest-xdist>=3.5"],
    },
)
