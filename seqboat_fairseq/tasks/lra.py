"""Long Range Arena tasks ``lra-text`` and ``lra-image`` (spec sections 10.2-10.3).

Data layouts (written by ``data_prep/lra.py``):

* ``lra-text``: ``src-bin/dict.txt`` + ``src-bin/{split}.{bin,idx}`` (fairseq-preprocess
  ``--only-source``; sequences end with ``</s>``), for Retrieval also ``src1-bin/{split}.*``
  (the second document, same dictionary), and ``label-bin/dict.txt`` +
  ``label-bin/{split}.*`` (one label symbol per line; the class id is its index in
  ``label-bin/dict.txt``). A ``<CLS>`` symbol is always appended to the dictionary.
* ``lra-image``: ``input/{split}.npy`` (``uint8``, shape ``(N, L)``, one image per row) and
  ``label/{split}.npy`` (``int64``, shape ``(N,)``), memory-mapped (``np.load(mmap_mode="r")``):
  opening a split reads only the ``.npy`` headers, every DDP rank (and data-loader worker) shares the
  operating system's page cache of the same files, and an image is read when it is used. Pixels
  become ``(p / 255 - mean) / std``.

  The earlier text layout, ``input/{split}.src`` (one image per line, space-separated integers
  0..255) and ``label/{split}.label`` (one integer per line), is still read, with a warning: it is
  parsed in full at every start by every rank (Path-X: ~9 GB of text, minutes per rank).
  Re-running ``data_prep/lra.py`` writes the ``.npy`` layout.
"""

import logging
import os
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch
from fairseq.data import Dictionary, FairseqDataset, data_utils
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II

logger = logging.getLogger(__name__)

CLS = "<CLS>"


@dataclass
class LRATextConfig(FairseqDataclass):
    data: str = field(default="", metadata={"help": "data directory (see seqboat_fairseq/tasks/lra.py)"})
    input_type: ChoiceEnum(["text", "image"]) = field(
        default="text", metadata={"help": "accepted for upstream recipes; must match the task"})
    max_positions: Optional[int] = field(
        default=None, metadata={"help": "longer inputs are truncated to this length (default: the "
                                        "architecture's, e.g. 2002 for ListOps; 1024 for --arch seqboat_lra)"})
    sen_rep_type: ChoiceEnum(["mp", "cls"]) = field(
        default="mp", metadata={"help": "sentence representation: masked mean (mp) or a prepended <CLS> (cls)"})
    no_shuffle: bool = field(default=False, metadata={"help": "keep the training data in file order"})
    seed: int = II("common.seed")


@dataclass
class LRAImageConfig(LRATextConfig):
    input_type: ChoiceEnum(["text", "image"]) = field(
        default="image", metadata={"help": "accepted for upstream recipes; must match the task"})
    pixel_normalization: List[float] = field(
        default_factory=lambda: [0.5, 0.5], metadata={"help": "pixel mean and std after dividing by 255"})


class LRAClassificationDataset(FairseqDataset):
    """Samples ``{id, source, [source1], target}`` read lazily from ``sources`` (an indexed token
    dataset, or a ``(N, L)`` integer array of real-valued samples: pixels, waveforms). Tokens are
    truncated to ``max_len`` (after an optional prepended ``<CLS>``; ``None``: no truncation);
    samples become ``(v / value_scale - mean) / std`` (pixels: ``value_scale`` 255). The collater
    right-pads token sequences and stacks sample sequences (equal length, no padding)."""

    def __init__(self, sources, targets: np.ndarray, max_len: Optional[int], pad_idx: Optional[int] = None,
                 sources1=None, prepend: Optional[int] = None, pixel_normalization=None,
                 shuffle: bool = True, seed: int = 1, value_scale: float = 255.0):
        self.sources, self.sources1, self.targets = sources, sources1, targets
        self.max_len, self.pad_idx, self.prepend = max_len, pad_idx, prepend
        self.pixel_normalization = pixel_normalization
        self.value_scale = value_scale
        self.shuffle, self.seed, self.epoch = shuffle, seed, 1
        extra = 1 if prepend is not None else 0
        sizes = np.full(len(sources), sources.shape[1]) if pixel_normalization else np.asarray(sources.sizes) + extra
        if sources1 is not None:
            sizes = np.maximum(sizes, np.asarray(sources1.sizes) + extra)
        self.sizes = (sizes if max_len is None else np.minimum(sizes, max_len)).astype(np.int64)

    def __len__(self):
        return len(self.targets)

    def _read(self, sources, index) -> torch.Tensor:
        if self.pixel_normalization is not None:
            mean, std = self.pixel_normalization
            values = np.asarray(sources[index, : self.max_len], dtype=np.float32)
            return torch.from_numpy((values / np.float32(self.value_scale) - np.float32(mean)) / np.float32(std))
        tokens = sources[index]
        if self.prepend is not None:
            tokens = torch.cat([tokens.new_tensor([self.prepend]), tokens])
        return tokens[: self.max_len]

    def __getitem__(self, index):
        item = {"id": index, "source": self._read(self.sources, index), "target": int(self.targets[index])}
        if self.sources1 is not None:
            item["source1"] = self._read(self.sources1, index)
        return item

    def _stack(self, items: List[torch.Tensor]) -> torch.Tensor:
        if self.pad_idx is None:
            return torch.stack(items)
        return data_utils.collate_tokens(items, self.pad_idx)

    def collater(self, samples):
        if not samples:
            return {}
        net_input = {"src_tokens": self._stack([s["source"] for s in samples]),
                     "src_lengths": torch.tensor([len(s["source"]) for s in samples])}
        if self.sources1 is not None:
            net_input["src_tokens1"] = self._stack([s["source1"] for s in samples])
            net_input["src_lengths1"] = torch.tensor([len(s["source1"]) for s in samples])
        return {
            "id": torch.tensor([s["id"] for s in samples]),
            "nsentences": len(samples),
            "ntokens": int(net_input["src_lengths"].sum()),
            "net_input": net_input,
            "target": torch.tensor([s["target"] for s in samples]),
        }

    def num_tokens(self, index):
        return int(self.sizes[index])

    def size(self, index):
        return int(self.sizes[index])

    def set_epoch(self, epoch):
        self.epoch = epoch

    def ordered_indices(self):
        if not self.shuffle:
            return np.arange(len(self))
        # a permutation seeded by --seed, new for every epoch
        return np.random.RandomState(self.seed + self.epoch).permutation(len(self))


def _require(path: str, what: str) -> str:
    if not os.path.exists(path):
        raise FileNotFoundError(f"LRA data: {what} not found: {path} (prepare it with data_prep/lra.py)")
    return path


@register_task("lra-text", dataclass=LRATextConfig)
class LRATextTask(FairseqTask):
    """ListOps, Text (IMDB) and Retrieval (AAN, two documents when ``src1-bin`` exists)."""

    expected_input_type = "text"

    def __init__(self, cfg, dictionary: Optional[Dictionary], label_dictionary: Optional[Dictionary]):
        super().__init__(cfg)
        if cfg.input_type != self.expected_input_type:
            raise ValueError(f"--input-type {cfg.input_type} does not match --task {self.task_name()}")
        self.dictionary = dictionary
        self.label_dictionary = label_dictionary
        self.two_documents = bool(cfg.data) and os.path.isdir(os.path.join(cfg.data, "src1-bin"))

    @classmethod
    def task_name(cls):
        return "lra-text"

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        dictionary = Dictionary.load(_require(os.path.join(cfg.data, "src-bin", "dict.txt"), "source dictionary"))
        dictionary.add_symbol(CLS)  # always appended, as upstream (part of the embedding table)
        label_dictionary = Dictionary.load(
            _require(os.path.join(cfg.data, "label-bin", "dict.txt"), "label dictionary"))
        logger.info(f"[input] dictionary: {len(dictionary)} types; [label] dictionary: {len(label_dictionary)} types")
        return cls(cfg, dictionary, label_dictionary)

    def _load_tokens(self, folder: str, split: str):
        prefix = os.path.join(self.cfg.data, folder, split)
        if os.path.isfile(prefix + ".bin") and os.path.getsize(prefix + ".bin") == 0:
            raise ValueError(f"LRA data: split {split!r} is empty: {prefix}.bin")
        dataset = data_utils.load_indexed_dataset(prefix, self.dictionary)
        if dataset is None:
            raise FileNotFoundError(f"LRA data: split {split!r} not found: {prefix}.{{bin,idx}}")
        return dataset

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, **kwargs):
        sources = self._load_tokens("src-bin", split)
        sources1 = self._load_tokens("src1-bin", split) if self.two_documents else None
        label_prefix = os.path.join(self.cfg.data, "label-bin", split)
        labels = data_utils.load_indexed_dataset(label_prefix, self.label_dictionary)
        if labels is None:
            raise FileNotFoundError(f"LRA data: labels of split {split!r} not found: {label_prefix}.{{bin,idx}}")
        # "<label> </s>" per line; the class id is the label symbol's index after the specials
        targets = np.array([int(labels[i][0]) - self.label_dictionary.nspecial for i in range(len(labels))])
        if len(targets) != len(sources) or (sources1 is not None and len(sources1) != len(sources)):
            raise ValueError(f"LRA data: split {split!r} has {len(sources)} inputs but {len(targets)} labels")
        prepend = self.dictionary.index(CLS) if self.cfg.sen_rep_type == "cls" else None
        self.datasets[split] = LRAClassificationDataset(
            sources, targets, self.cfg.max_positions, self.dictionary.pad(), sources1, prepend=prepend,
            shuffle=not self.cfg.no_shuffle and split == "train", seed=self.cfg.seed)
        logger.info(f"loaded {len(sources)} examples from {split}")

    def max_positions(self):
        return self.cfg.max_positions

    @property
    def source_dictionary(self):
        return self.dictionary

    @property
    def target_dictionary(self):
        return self.label_dictionary


@register_task("lra-image", dataclass=LRAImageConfig)
class LRAImageTask(LRATextTask):
    """Image (CIFAR-10 grayscale), Pathfinder and Path-X: pixel sequences, no padding."""

    expected_input_type = "image"

    @classmethod
    def task_name(cls):
        return "lra-image"

    @classmethod
    def add_args(cls, parser):
        """As upstream's recipes write it: ``--pixel-normalization MEAN STD`` (two numbers; fairseq
        would otherwise expect one list-valued string)."""
        super().add_args(parser)
        for action in parser._actions:
            if "--pixel-normalization" in action.option_strings:
                action.nargs, action.type, action.metavar = 2, float, ("MEAN", "STD")
                if isinstance(action.default, str):  # fairseq writes list defaults as "0.5,0.5"
                    action.default = [float(v) for v in action.default.split(",")]

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        _require(os.path.join(cfg.data, "input"), "pixel input directory")
        return cls(cfg, None, None)

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, **kwargs):
        mean, std = self.cfg.pixel_normalization
        pixels, targets = load_image_split(self.cfg.data, split)
        self.datasets[split] = LRAClassificationDataset(
            pixels, targets, self.cfg.max_positions, pixel_normalization=(mean, std),
            shuffle=not self.cfg.no_shuffle and split == "train", seed=self.cfg.seed)
        logger.info(f"loaded {len(pixels)} images of {pixels.shape[1]} pixels from {split}")

    @property
    def source_dictionary(self):
        return None

    @property
    def target_dictionary(self):
        return None


# --------------------------------------------------------------------------- memory-mapped arrays


class MemmapArray:
    """A ``.npy`` file opened with ``np.load(path, mmap_mode="r")``: rows are read when indexed.

    Pickling (spawned data-loader workers, DDP processes) sends the path, not the data; each process
    maps the file again, so all of them share the operating system's page cache of it."""

    def __init__(self, path: str, array: np.ndarray):
        self.path, self._array = path, array
        self.shape, self.dtype = array.shape, array.dtype

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        return self._array

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, index):
        return self.array[index]

    def __getstate__(self):
        return dict(self.__dict__, _array=None)


def open_npy(path: str, dtype, ndim: int, what: str, prep: str) -> MemmapArray:
    """Memory-map the ``.npy`` file ``path`` (``dtype``, ``ndim`` dimensions, at least one row);
    ``ValueError`` naming the file and what was expected otherwise (``prep``: the script that writes it)."""
    expected = f"{what}: a NumPy .npy file of {np.dtype(dtype).name} with {ndim} dimension{'s' if ndim > 1 else ''}"
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file (expected {expected}; prepare it with {prep})") from None
    except (ValueError, OSError, EOFError) as exc:  # truncated, not a .npy, an object array, ...
        raise ValueError(f"{path}: cannot be memory-mapped ({exc}); expected {expected}, as {prep} "
                         "writes it: re-run it") from None
    if not isinstance(array, np.ndarray) or array.dtype != np.dtype(dtype) or array.ndim != ndim:
        got = f"{array.dtype} of shape {array.shape}" if isinstance(array, np.ndarray) else type(array).__name__
        raise ValueError(f"{path}: holds {got}; expected {expected} (re-run {prep})")
    if array.shape[0] == 0:
        raise ValueError(f"{path}: holds no rows; expected {expected}")
    return MemmapArray(path, array)


def load_labels(path: str, count: int, inputs_path: str, prep: str, num_classes: Optional[int] = None) -> np.ndarray:
    """The ``int64`` labels of ``path`` (read into memory: 8 bytes per example), checked against
    the ``count`` inputs of ``inputs_path`` and the class range."""
    labels = np.array(open_npy(path, np.int64, 1, "class labels", prep).array)
    if len(labels) != count:
        raise ValueError(f"{path}: {len(labels):,} labels for the {count:,} inputs of {inputs_path}; "
                         f"expected one label per input (re-run {prep})")
    bad = labels < 0
    if num_classes is not None:
        bad |= labels >= num_classes
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        expected = f"0..{num_classes - 1}" if num_classes is not None else "non-negative"
        raise ValueError(f"{path}: label {labels[first]} of example {first}; expected class ids {expected}")
    return labels


def load_image_split(data: str, split: str):
    """``(pixels (N, L) uint8 array-like, targets (N,) int64)`` of one lra-image split: the
    memory-mapped ``.npy`` layout, or else the earlier text layout (with a warning)."""
    prep = "data_prep/lra.py"
    npy = os.path.join(data, "input", f"{split}.npy")
    text = os.path.join(data, "input", f"{split}.src")
    if os.path.exists(npy):
        pixels = open_npy(npy, np.uint8, 2, "images, one row of pixels 0..255 each", prep)
        return pixels, load_labels(os.path.join(data, "label", f"{split}.npy"), len(pixels), npy, prep)
    if not os.path.exists(text):
        raise FileNotFoundError(f"LRA data: split {split!r} not found: {npy} (prepare it with {prep})")
    logger.warning(f"{text}: images in the earlier text format, parsed in full at every start by every "
                   f"process (Path-X: minutes); re-run {prep} to write the memory-mapped input/{split}.npy "
                   "(read as it is used, shared by all processes)")
    pixels = read_pixel_file(text)
    label_path = _require(os.path.join(data, "label", f"{split}.label"), f"labels of {split!r}")
    with open(label_path) as f:
        targets = np.array([int(line) for line in f if line.strip()], dtype=np.int64)
    if len(targets) != len(pixels):
        raise ValueError(f"LRA data: {label_path} has {len(targets)} labels for {len(pixels)} images")
    return pixels, targets


def read_pixel_file(path: str) -> np.ndarray:
    """``(N, L)`` uint8 from one-image-per-line text (the earlier layout); every line must have the
    same length. Shows progress (tqdm, on a terminal) for files above 64 MB."""
    from tqdm import tqdm

    rows = []
    size = os.path.getsize(path)
    with open(path) as f, tqdm(total=size, unit="B", unit_scale=True, desc=f"parsing {os.path.basename(path)}",
                               disable=None if size > 64 * 2 ** 20 else True, leave=False) as progress:
        for number, line in enumerate(f, start=1):
            progress.update(len(line))
            try:
                row = np.array(line.split(), dtype=np.int64)
            except ValueError:
                raise ValueError(f"{path}:{number}: expected space-separated integers 0..255") from None
            if row.size == 0 or row.min() < 0 or row.max() > 255:
                raise ValueError(f"{path}:{number}: expected space-separated integers 0..255")
            if rows and row.size != rows[0].size:
                raise ValueError(f"{path}:{number}: {row.size} pixels, but line 1 has {rows[0].size}")
            rows.append(row.astype(np.uint8))
    if not rows:
        raise ValueError(f"{path}: no images")
    return np.stack(rows)
