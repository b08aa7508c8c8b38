"""Long Range Arena tasks ``lra-text`` and ``lra-image``.

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

The datasets are fairseq's blocks, composed as its ``sentence_prediction`` task composes them
(``classification_dataset``): ``PrependTokenDataset`` (``<CLS>``), ``TruncateDataset``
(``--max-positions``), ``RightPadDataset``, ``NumelDataset``, ``IdDataset``, ``NumSamplesDataset``,
``RawLabelDataset``, ``ConcatSentencesDataset`` (``ntokens`` of both Retrieval documents) in a
``NestedDictionaryDataset``. Two small pieces are this plugin's: ``RealValuedSamplesDataset``
(memory-mapped pixel/audio rows, normalised) and ``EpochShuffledDataset`` (the per-epoch order).
"""

import logging
import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import List, Optional

import numpy as np
import torch
from fairseq.data import (BaseWrapperDataset, ConcatSentencesDataset, Dictionary, FairseqDataset, IdDataset,
                          NestedDictionaryDataset, NumelDataset, NumSamplesDataset, PrependTokenDataset,
                          RawLabelDataset, RightPadDataset, TruncateDataset, data_utils)
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


class RealValuedSamplesDataset(FairseqDataset):
    """Rows of an ``(N, L)`` integer array (a memory-mapped ``.npy`` file, ``MemmapArray``, or the
    parsed earlier text layout) as ``float32`` tensors ``(v / scale - mean) / std`` of at most
    ``max_len`` values (pixels: ``scale`` 255; audio: 32768), read one row per item.

    This plugin's own, because no fairseq dataset fits: its indexed datasets hold variable-length
    token ids in ``.bin``/``.idx`` files (no lazily read fixed-width ``uint8``/``int16`` arrays),
    its audio datasets read sound files, and none normalises. The values are computed in
    ``float32`` as upstream does, the same bits as every earlier run. All rows have one length: the
    collater stacks them (nothing to pad). A sample is read once though three members of the
    batch ask for it (``src_tokens``, ``src_lengths``, ``ntokens``): ``__getitem__`` is cached as
    in fairseq's ``LRUCacheDataset``, whose own ``collater`` cannot take a list."""

    def __init__(self, rows, mean: float, std: float, scale: float = 255.0, max_len: Optional[int] = None):
        super().__init__()
        self.rows, self.max_len = rows, max_len
        self.mean, self.std, self.scale = np.float32(mean), np.float32(std), np.float32(scale)
        length = rows.shape[1] if max_len is None else min(rows.shape[1], max_len)
        self.sizes = np.full(len(rows), length, dtype=np.int64)

    def __len__(self):
        return len(self.rows)

    @lru_cache(maxsize=8)
    def __getitem__(self, index):
        values = np.asarray(self.rows[index, : self.max_len], dtype=np.float32)
        return torch.from_numpy((values / self.scale - self.mean) / self.std)

    def collater(self, samples):
        return torch.stack(samples)


class EpochShuffledDataset(BaseWrapperDataset):
    """The order fairseq cuts batches from: with ``shuffle``, the permutation
    ``RandomState(seed + epoch)`` draws for the epoch the trainer sets before it asks
    (``set_epoch``, then ``ordered_indices``); otherwise file order.

    Not fairseq's ``SortDataset`` (``sentence_prediction``'s shuffle): its order is fixed when it is
    built, from a seed alone; this one is the order every LRA and speech_commands run has used.
    The batches can be reused across epochs (sizes never change; the epoch iterator reshuffles the
    batches): said here because ``NestedDictionaryDataset`` asks each member, and fairseq's
    ``MMapIndexedDataset`` has no answer, which fairseq takes as "no" and rebuilds them each epoch."""

    def __init__(self, dataset, shuffle: bool, seed: int):
        super().__init__(dataset)
        self.shuffle, self.seed, self.epoch = shuffle, seed, 1

    def set_epoch(self, epoch):
        super().set_epoch(epoch)
        self.epoch = epoch

    def ordered_indices(self):
        if not self.shuffle:
            return np.arange(len(self))
        return np.random.RandomState(self.seed + self.epoch).permutation(len(self))

    @property
    def can_reuse_epoch_itr_across_epochs(self):
        return True


def classification_dataset(documents, targets, pad_idx: Optional[int], shuffle: bool, seed: int):
    """Samples of one or two documents (Retrieval) and a class each, built like fairseq's
    ``sentence_prediction`` task builds them. ``documents``: datasets of token tensors (right-padded
    with ``pad_idx``) or of real-valued rows (``pad_idx`` None). Batches: ``{id, nsentences,
    ntokens, net_input: {src_tokens, src_lengths[, src_tokens1, src_lengths1]}, target}``;
    ``ntokens`` counts the tokens of every document."""
    net_input = {}
    for suffix, document in zip(("", "1"), documents):
        net_input["src_tokens" + suffix] = document if pad_idx is None else RightPadDataset(document, pad_idx)
        net_input["src_lengths" + suffix] = NumelDataset(document, reduce=False)
    every_token = documents[0] if len(documents) == 1 else ConcatSentencesDataset(*documents)
    dataset = NestedDictionaryDataset(
        {"id": IdDataset(), "nsentences": NumSamplesDataset(), "ntokens": NumelDataset(every_token, reduce=True),
         "net_input": net_input, "target": RawLabelDataset(targets)},
        sizes=[np.maximum.reduce([np.asarray(d.sizes, dtype=np.int64) for d in documents])])
    return EpochShuffledDataset(dataset, shuffle, seed)


def _require(path: str, what: str) -> str:
    if not os.path.exists(path):
        raise FileNotFoundError(f"LRA data: {what} not found: {path} (prepare it with data_prep/lra.py)")
    return path


class ClassificationTask(FairseqTask):
    """What the LRA tasks and ``speech_commands`` share: one class per input, the model's length
    limit, dictionaries (none for real-valued inputs) and the datasets' composition and order."""

    dictionary: Optional[Dictionary] = None
    label_dictionary: Optional[Dictionary] = None

    def set_classification_dataset(self, split: str, documents, targets, pad_idx: Optional[int] = None):
        """``self.datasets[split]`` from ``documents`` and ``targets`` (see ``classification_dataset``):
        the training split shuffled per epoch (unless ``--no-shuffle``), the others in file order."""
        self.datasets[split] = classification_dataset(
            documents, targets, pad_idx, shuffle=not self.cfg.no_shuffle and split == "train", seed=self.cfg.seed)

    def max_positions(self):
        return self.cfg.max_positions

    @property
    def source_dictionary(self):
        return self.dictionary

    @property
    def target_dictionary(self):
        return self.label_dictionary


@register_task("lra-text", dataclass=LRATextConfig)
class LRATextTask(ClassificationTask):
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

    def _document(self, folder: str, split: str):
        """One document's tokens: ``<CLS>`` first with ``--sen-rep-type cls``, at most ``--max-positions``."""
        tokens = self._load_tokens(folder, split)
        if self.cfg.sen_rep_type == "cls":
            tokens = PrependTokenDataset(tokens, self.dictionary.index(CLS))
        if self.cfg.max_positions is not None:
            tokens = TruncateDataset(tokens, self.cfg.max_positions)
        return tokens

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, **kwargs):
        documents = [self._document("src-bin", split)]
        if self.two_documents:
            documents.append(self._document("src1-bin", split))
        label_prefix = os.path.join(self.cfg.data, "label-bin", split)
        labels = data_utils.load_indexed_dataset(label_prefix, self.label_dictionary)
        if labels is None:
            raise FileNotFoundError(f"LRA data: labels of split {split!r} not found: {label_prefix}.{{bin,idx}}")
        # "<label> </s>" per line; the class id is the label symbol's index after the specials. Read
        # into memory at once (8 bytes per example; their number is checked here): one integer per
        # sample, as the models expect (sentence_prediction's OffsetTokensDataset(StripTokenDataset)
        # would give (B, 1) targets)
        targets = np.array([int(labels[i][0]) - self.label_dictionary.nspecial for i in range(len(labels))])
        if any(len(document) != len(targets) for document in documents):
            raise ValueError(f"LRA data: split {split!r} has {len(documents[0])} inputs but {len(targets)} labels")
        self.set_classification_dataset(split, documents, targets, self.dictionary.pad())
        logger.info(f"loaded {len(targets)} examples from {split}")


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
        samples = RealValuedSamplesDataset(pixels, mean, std, scale=255.0, max_len=self.cfg.max_positions)
        self.set_classification_dataset(split, [samples], targets)
        logger.info(f"loaded {len(pixels)} images of {pixels.shape[1]} pixels from {split}")


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
