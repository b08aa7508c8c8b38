"""Raw speech classification: Speech Commands SC10 (``--task speech_commands``).

Data (written by ``data_prep/speech_commands.py``): ``input/{split}.npy`` (``int16``, shape
``(N, 16000)``: one zero-padded 1 s clip at 16 kHz per row), ``label/{split}.npy`` (``int64``,
class ids 0-9) and ``meta.json`` (classes, clip length, train statistics). The arrays are
memory-mapped (``np.load(mmap_mode="r")``): nothing is parsed at start-up, every DDP rank shares
one copy in the page cache, and a clip is read when it is used.

Each sample becomes the real number ``(s / 32768 - train_mean) / (train_std + 1e-5)`` (upstream's
normalisation, statistics of the train split) and is embedded like a pixel (``input_type`` is
``image``: the model's ``RealNumberEmbedding``). Clips are never truncated: ``--max-positions``
must be at least the clip length (16,000). Use it with ``--arch seqboat_sc_raw`` (or upstream's
``slag_sc_raw_base``) and ``--criterion lra_cross_entropy``.
"""

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Optional

from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.tasks import register_task
from omegaconf import II

from .lra import ClassificationTask, RealValuedSamplesDataset, load_labels, open_npy

logger = logging.getLogger(__name__)

PREP = "data_prep/speech_commands.py"
META = "meta.json"
FORMAT = "seqboat-fairseq speech_commands raw 1"
NORMALIZATION_EPS = 1e-5  # upstream: (x - mean) / (std + 1e-5)


@dataclass
class SpeechCommandsConfig(FairseqDataclass):
    data: str = field(default="", metadata={"help": f"data directory written by {PREP}"})
    input_type: ChoiceEnum(["image"]) = field(
        default="image", metadata={"help": "real-valued samples, embedded like pixels (the model mirrors it)"})
    max_positions: Optional[int] = field(
        default=None, metadata={"help": "the model's maximum input length (default: the architecture's, 16000 "
                                        "for seqboat_sc_raw); clips are never truncated, so at least 16000"})
    sen_rep_type: ChoiceEnum(["mp"]) = field(
        default="mp", metadata={"help": "sentence representation: mean over the samples (mp)"})
    no_shuffle: bool = field(default=False, metadata={"help": "keep the training data in file order"})
    seed: int = II("common.seed")


def read_meta(data: str) -> dict:
    """``meta.json`` of a prepared data directory; errors name the file and what was expected."""
    path = os.path.join(data, META)
    if not os.path.isdir(data):
        raise FileNotFoundError(f"speech_commands data: {data}: no such directory (prepare it with {PREP})")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"speech_commands data: {path}: no such file; expected a data directory "
                                f"written by {PREP}") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"speech_commands data: {path}: unreadable ({exc}); re-run {PREP}") from None
    keys = ("classes", "clip_samples", "sample_scale", "train_mean", "train_std")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or any(k not in meta for k in keys):
        raise ValueError(f"speech_commands data: {path}: expected the format {FORMAT!r} with {', '.join(keys)}; "
                         f"re-run {PREP}")
    return meta


@register_task("speech_commands", dataclass=SpeechCommandsConfig)
class SpeechCommandsTask(ClassificationTask):
    """SC10 raw waveforms: 16,000 real-valued samples per clip, 10 classes."""

    def __init__(self, cfg: SpeechCommandsConfig, meta: dict):
        super().__init__(cfg)
        self.meta = meta
        self.classes = list(meta["classes"])
        self.clip_samples = int(meta["clip_samples"])

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        meta = read_meta(cfg.data)
        logger.info(f"speech_commands: {len(meta['classes'])} classes, {meta['clip_samples']:,} samples per clip")
        return cls(cfg, meta)

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, **kwargs):
        inputs = os.path.join(self.cfg.data, "input", f"{split}.npy")
        if not os.path.exists(inputs):
            raise FileNotFoundError(f"speech_commands data: split {split!r} not found: {inputs} "
                                    f"(prepare it with {PREP})")
        waves = open_npy(inputs, "int16", 2, f"clips, one row of {self.clip_samples:,} 16-bit samples each", PREP)
        if waves.shape[1] != self.clip_samples:
            raise ValueError(f"{inputs}: clips of {waves.shape[1]:,} samples, but {META} says "
                             f"{self.clip_samples:,}; re-run {PREP}")
        max_positions = self.cfg.max_positions
        if max_positions is not None and max_positions < self.clip_samples:
            raise ValueError(f"--max-positions {max_positions} is shorter than the clips of {inputs} "
                             f"({self.clip_samples:,} samples); this task does not truncate audio: use "
                             f"--max-positions {self.clip_samples}")
        labels = load_labels(os.path.join(self.cfg.data, "label", f"{split}.npy"), len(waves), inputs, PREP,
                             num_classes=len(self.classes))
        mean, std = float(self.meta["train_mean"]), float(self.meta["train_std"])
        samples = RealValuedSamplesDataset(waves, mean, std + NORMALIZATION_EPS, scale=float(self.meta["sample_scale"]))
        self.set_classification_dataset(split, [samples], labels)
        logger.info(f"loaded {len(waves):,} clips of {self.clip_samples:,} samples from {split} (memory-mapped)")

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        classes = getattr(cfg, "sentence_class_num", None)
        if classes is not None and classes != len(self.classes):
            raise ValueError(f"--sentence-class-num {classes} does not match the {len(self.classes)} classes of "
                             f"{os.path.join(self.cfg.data, META)} ({', '.join(self.classes)})")
        return model
