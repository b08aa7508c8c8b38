"""Generation (incremental decoding) benchmark: SeqBoat vs fairseq's stock ``transformer_lm``.

Measures milliseconds per *generated* token at several context lengths (batch 1, fp32, eval
mode, ``torch.no_grad``, CPU), the decode-state memory per layer, and the observed router
activation rate. Nothing in the library is modified or monkey-patched.

Run from the repository root::

    python bench/generation.py                                  # defaults (~5-10 min, 2 cores)
    python bench/generation.py --contexts 256,1024 --layers 4   # quicker
    python bench/generation.py --models seqboat --profile       # + torch.profiler of one step

Rows (one per model and context; each is printed in a table and as ``BENCH {json}``):

``seqboat``
    ``--arch seqboat_lm_enwik8_base`` (D=616, H=1232, Z=128, N=16, w=1024, MD-EMA truncation
    2048, rotary, prenorm, no FFN, byte vocabulary), ``--layers`` layers, dropout 0.
    The decoding state for a context of ``c`` tokens is built by *prefill*: one model call on
    ``c`` random byte tokens with an empty ``incremental_state`` (every layer runs
    ``SeqBoatLayer.forward_chunk`` once); its wall time is reported as ``prefill_ms`` and is
    not part of the per-token numbers; ``forward_ms`` is one plain parallel forward of the same
    tokens (no state, as in training or scoring), and ``prefill_ratio`` = prefill / forward
    (target: <= 1.5). Then:

    * ``ms_per_token_model``: median over ``--steps`` timed calls (after ``--warmup`` untimed
      ones) of ``model(prefix, incremental_state=state)`` with the FULL prefix of length
      ``c + i + 1`` (fairseq's convention; the decoder feeds only the one new token). This is
      everything: embedding, all layers, the final norm and the output projection.
    * ``ms_per_token_layer``: every layer's ``SeqBoatLayer.step`` timed on its own, on random
      ``N(0, 1)`` inputs of shape ``(B, D)``, each layer starting from its prefilled state and
      advancing it; one sample per step = the mean over the layers of that step's times, then
      the median over the timed steps (a skipped token costs less than an activated one, so
      single-layer step times are bimodal; their per-step mean is not).
    * ``act_rate``: fraction of (token, layer) pairs routed to the GAU during the timed
      *model* steps (``act_rate_layer_bench``: the same during the per-layer timing). The
      router is untrained (random init), so roughly half the tokens are activated; a trained
      model activates fewer, so real decoding is at most this expensive.
    * ``ms_per_token_model_at_act50``: a step costs more the more layers activate the token
      (skipped layers: EMA step + always-on path; activated ones add the GAU output and the
      working-memory push), so the raw median moves with whatever activation rate the untrained
      router produces at that context. A least-squares fit ``ms = a + b * (activated layers)``
      over the timed model steps gives ``ms_per_token_model_all_skipped`` (a),
      ``ms_per_activated_layer`` (b) and this value, ``a + b * layers / 2``: the cost at a 50%
      activation rate, comparable across contexts.
    * ``state_bytes_per_layer``: ``sum(t.numel() * t.element_size())`` over layer 0's state
      dict after prefill (MD-EMA hidden + lagged hidden + the ring of the last ``truncation``
      inputs, the ``w``-slot working memory of keys/values/positions, counters). It must be
      the same at every context; ``state_constant`` checks it for every layer, after prefill
      and after the timed steps.

``transformer``
    fairseq's ``--arch transformer_lm`` of the same width/depth (``--decoder-embed-dim 616
    --decoder-ffn-embed-dim 2464 --decoder-attention-heads 8``, sinusoidal positions), KV
    cache decoding. Instead of stepping ``c`` tokens to build the cache, every self-attention's
    incremental state (``MultiheadAttention._set_input_buffer``, slot ``attn_state``) is set to
    random ``prev_key`` / ``prev_value`` of shape ``(B, heads, c, head_dim)`` with
    ``prev_key_padding_mask=None``, exactly the layout fairseq itself stores. Timed steps pass
    the prefix of length ``c + i + 1`` (positions come from the prefix length, so
    ``--max-target-positions`` is set above the largest context). ``ms_per_token_layer``: every
    ``TransformerDecoderLayer`` timed on its own on random inputs against its cache (which grows
    by one per step), per-step mean over the layers, median over the steps, as for SeqBoat.
    ``state_bytes_per_layer`` is the KV cache of one layer at context ``c`` (grows with c).

SeqBoat and the Transformer are timed *interleaved* at each context (step i of one, then of
the other, the order alternating), first whole-model steps, then per-layer steps, so a burst
of CPU use by other processes hits both alike and their ratios stay fair.

``seqboat_upstream_emulated``  (an EMULATION, not upstream code)
    Upstream SeqBoat decoding recomputed the layer over the last ``truncation`` (= 2048)
    cached tokens at every step. Emulated as one parallel ``SeqBoatLayer.forward`` (no
    incremental state) over ``(min(c, 2048), 1, D)`` random inputs per generated token;
    ``ms_per_token_model`` is ``layers x`` that (embedding/output projection not included).
    It says what the per-token cost would be with that decoding scheme, nothing more.

After the rows come ratio/summary lines (also ``BENCH`` lines, ``"bench":
"generation_summary"``) checking these targets:

* SeqBoat ms/token (whole model) at the largest context / at the smallest context <= 1.2, compared at
  equal (50 %) activation (``ms_per_token_model_at_act50``): a step's cost follows how many layers
  activate the token, and the untrained routers' rate drifts with the context;
* SeqBoat at least as fast as the Transformer at a 256-token context, and >= 10x faster at 16384;
* SeqBoat decode-state memory constant in the context;
* SeqBoat <= 1 ms per layer step (``ms_per_token_layer``) at every context (``--max-layer-ms``).

The header names the CPU model: few-row products take whichever CPU route ``modules/linear.py``
measured to be faster on this machine (timed once per shape, in the first, untimed warm-up step;
``linear_routes`` in every SeqBoat row lists the decisions).

Memory-bound floor: a decoding step at batch 1 does little arithmetic per byte it reads, so its
time is bounded below by ``bytes_read_per_layer_step`` (one layer's weights, plus SeqBoat's
occupied working-memory slots and MD-EMA hidden states, or the Transformer's KV cache) divided by
the machine's read bandwidth (``read_bandwidth_gbs``: torch's ``sum`` over 512 MiB, measured once
per run): ``floor_ms_per_layer``. A per-layer time near the floor cannot be improved by code, only
by reading fewer bytes (e.g. lower-precision weights). ``matvec_floor_ms_per_layer`` divides the same
bytes by the rate torch's own one-row ``F.linear`` reads a weight on this machine
(``matvec_bandwidth_gbs``, measured once per run; often well below the streaming rate): what the
library's kernels would take to read them. The bytes are those of an activated token; on the CPU a
token that no sequence of the batch activates skips the GAU (``SeqBoatLayer.skip_inactive_on_host``) and
reads about a sixth of them, so decoding time follows the activation rate.

Batched and beam rows: ``--batch-size B`` decodes B sequences together (every row also reports
``tokens_per_s`` = B / model step time); ``--beam K`` sets B = K and adds to every timed model
step the reorder fairseq's ``SequenceGenerator`` makes after each step
(``reorder_incremental_state`` with a random beam order: one ``index_select`` per state tensor,
SeqBoat's constant-size state or the Transformer's growing KV cache).

If the first target fails (per-token time grows with the context), or with ``--profile``, one
SeqBoat model step at the largest context is profiled with ``torch.profiler`` and the top ops
are printed.

Machine-readable output: every line starting with ``BENCH `` is followed by one JSON object.

CPU contention: on a small shared machine another busy process inflates OpenMP timings many
times over. Before each timed phase (never the prefill) the script waits up to ``--wait-quiet``
seconds (``--wait-budget`` in all) for other processes to use fewer than ``--quiet-threshold``
cores, measures the cores other processes kept busy during the phase
(``bench/common.py::ContentionMeter``), re-runs a disturbed phase up to ``--retries`` times
keeping the least disturbed attempt, and reports the worst phase of each row as
``other_cores``; rows at or above the threshold are flagged. ``--threads 1`` suffers far less
from a busy neighbour than an OpenMP pool spanning every core.
"""

import argparse
import os
import sys
import time
from typing import Dict, List, Optional, Tuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
PLUGIN_DIR = os.path.join(REPO_ROOT, "seqboat_fairseq")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (ContentionMeter, add_quiet_args, add_threads_seed_args, build_from_cli, cpu_model,  # noqa: E402
                    emit, format_cell, format_table, matvec_bandwidth_gbs, median, parse_int_list, read_bandwidth_gbs,
                    wait_until_quiet)

SEQBOAT_ARCH = "seqboat_lm_enwik8_base"
MODELS = ("seqboat", "transformer", "upstream")
# first non-special byte token id in a fairseq byte dictionary (0..3 are <s>, <pad>, </s>, <unk>)
FIRST_TOKEN, VOCAB = 4, 260


# --------------------------------------------------------------------------- helpers
def build_lm(*cli_args: str):
    """A model built exactly as fairseq-train would (bench/common.py), in eval mode."""
    model, task = build_from_cli(*cli_args)
    return model.to(DEVICE).eval(), task


def state_tensors(state, prefix: str = "") -> Dict[str, torch.Tensor]:
    """Every tensor of a (possibly nested) decoding state, by dotted name."""
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    if isinstance(state, dict):
        return {k: t for key, value in state.items() for k, t in state_tensors(value, f"{prefix}{key}.").items()}
    return {}


def state_bytes(state) -> int:
    return sum(t.numel() * t.element_size() for t in state_tensors(state).values())


def state_shapes(state) -> Dict[str, tuple]:
    return {k: tuple(t.shape) for k, t in state_tensors(state).items()}


def clone_state(state):
    """A deep copy: SeqBoat states are updated in place by step / forward_chunk."""
    if isinstance(state, torch.Tensor):
        return state.clone()
    if isinstance(state, dict):
        return {key: clone_state(value) for key, value in state.items()}
    return state


DEVICE = torch.device("cpu")  # --device


def now_ms() -> float:
    """Wall clock; on a GPU after the queued work has finished."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() * 1000.0


def human_bytes(n: Optional[int]) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024.0
    return str(n)


# --------------------------------------------------------------------------- timing
class Quiet:
    """Waits for a quiet CPU before each timed phase (sharing ``--wait-budget`` seconds of
    waiting over the whole run) and measures the contention during the phase."""

    def __init__(self, args):
        self.args = args
        self.budget = args.wait_budget

    def wait(self) -> None:
        max_wait = min(self.args.wait_quiet, self.budget)
        if max_wait <= 0:
            return
        start = time.perf_counter()
        wait_until_quiet(max_wait, self.args.quiet_threshold, log=lambda m: print(m, flush=True))
        self.budget -= time.perf_counter() - start

    def phase(self, run):
        """``run() -> (times_ms, info)``. Runs it after waiting for a quiet CPU; if other
        processes used >= ``--quiet-threshold`` cores meanwhile, runs it again (up to
        ``--retries`` times) and keeps the least disturbed attempt.
        Returns ``(times_ms, info, other_cores)``."""
        best = None
        for _ in range(self.args.retries + 1):
            self.wait()
            with ContentionMeter() as meter:
                times, info = run()
            if best is None or meter.other_cores < best[2]:
                best = (times, info, meter.other_cores)
            if meter.other_cores < self.args.quiet_threshold:
                break
        return best


def collect(benches: List["Contestant"], phase: str, args) -> Dict[str, Dict[str, List[float]]]:
    """One timed phase (``"model"`` or ``"layer"``) of every contestant, *interleaved*: step i
    of each in turn (the order alternating with i), so a burst of CPU contention hits all of
    them alike and their ratios stay fair. Returns ``{name: {"times": ms, ...counters}}``."""
    out = {b.name: {"times": [], "active": 0, "routed": 0, "per_step_active": []} for b in benches}
    for i in range(args.warmup + args.steps):
        for b in (benches if i % 2 == 0 else benches[::-1]):
            ms, active, routed = b.model_step() if phase == "model" else b.layer_step()
            if i >= args.warmup:
                rec = out[b.name]
                rec["times"].append(ms)
                rec["active"] += active
                rec["routed"] += routed
                rec["per_step_active"].append(active)
    return out


def activation_fit(times: List[float], active: List[int]) -> Optional[Dict[str, float]]:
    """Least-squares ``ms = skip_ms + extra_ms * (activated layers in the step)`` over the timed
    model steps: a SeqBoat step costs more the more layers route the token to the GAU, so the
    raw median moves with the activation rate the (untrained) router happens to produce."""
    n = len(times)
    if n < 3 or len(set(active)) < 2:
        return None
    mean_a, mean_t = sum(active) / n, sum(times) / n
    var = sum((a - mean_a) ** 2 for a in active)
    slope = sum((a - mean_a) * (t - mean_t) for a, t in zip(active, times)) / var
    return {"skip_ms": mean_t - slope * mean_a, "extra_ms_per_active_layer": slope}


class Contestant:
    name = ""
    beam_orders: Optional[torch.Tensor] = None  # (steps, B): --beam, one reorder per model step
    model_calls = 0

    def timed_model_call(self, prefix) -> Tuple[float, object]:
        """``model(prefix, incremental_state)``, plus (``--beam``) the state reorder that fairseq's
        SequenceGenerator makes after every step, timed together. Returns ``(ms, model output)``."""
        start = now_ms()
        out = self.model(prefix, incremental_state=self.incremental_state)
        if self.beam_orders is not None:
            order = self.beam_orders[self.model_calls % self.beam_orders.size(0)]
            self.model.decoder.reorder_incremental_state_scripting(self.incremental_state, order)
        ms = now_ms() - start
        self.model_calls += 1
        return ms, out

    def set_beam_orders(self, args, gen: torch.Generator) -> None:
        if getattr(args, "beam", 0):  # callers with their own options (bench/paper_efficiency.py) have none
            steps = (args.warmup + args.steps) * (args.retries + 1) + 8
            self.beam_orders = torch.randint(0, args.batch_size, (steps, args.batch_size), generator=gen).to(DEVICE)

    def model_step(self):
        """One generated token through the whole model: ``(ms, active, routed)``."""
        raise NotImplementedError

    def layer_step(self):
        """One token through every layer, each timed alone: ``(mean ms per layer, active, routed)``."""
        raise NotImplementedError


# --------------------------------------------------------------------------- SeqBoat
def seqboat_states(model, incremental_state) -> List[Dict[str, torch.Tensor]]:
    return [layer.get_incremental_state(incremental_state, "seqboat_state") for layer in model.decoder.layers]


class SeqBoatContestant(Contestant):
    """Prefills ``context`` random tokens (timed as ``prefill_ms``), then steps one token at a time."""

    name = "seqboat"

    def __init__(self, model, context: int, args, gen: torch.Generator):
        self.model, self.context, self.layers = model, context, model.decoder.layers
        bsz, dim = args.batch_size, model.decoder.embed_tokens.embedding_dim
        steps = (args.warmup + args.steps) * (args.retries + 1)
        self.tokens = torch.randint(FIRST_TOKEN, VOCAB, (bsz, context + steps + 8), generator=gen).to(DEVICE)  # + profile
        self.xs = torch.randn(steps + 1, len(self.layers), bsz, dim, generator=gen).to(DEVICE)
        model(self.tokens[:, :min(context, 64)], incremental_state={})  # warm-up: first-call costs out of the timing
        model(self.tokens[:, :min(context, 64)])
        self.incremental_state: Dict = {}
        start = now_ms()
        model(self.tokens[:, :context], incremental_state=self.incremental_state)  # one parallel pass
        self.prefill_ms = now_ms() - start
        start = now_ms()
        model(self.tokens[:, :context])  # the same tokens without a state: the training-style forward
        self.forward_ms = now_ms() - start
        states = seqboat_states(model, self.incremental_state)
        assert states[0]["length"] == context
        self.layer_bytes = [state_bytes(s) for s in states]
        self.shapes = [state_shapes(s) for s in states]
        self.layer_states = [clone_state(s) for s in states]  # step / forward_chunk update a state in place
        self.layer_calls = 0
        self.set_beam_orders(args, gen)

    def model_step(self):
        # fairseq convention: the FULL prefix; the decoder feeds only the new token
        consumed = self.layers[0].decoded_length(self.incremental_state)
        ms, (_, extra) = self.timed_model_call(self.tokens[:, :consumed + 1])
        return ms, sum(int(a.active.sum()) for a in extra["activations"]), \
            sum(a.active.numel() for a in extra["activations"])

    def layer_step(self):
        # SeqBoatLayer.step on random N(0, 1) inputs, each layer continuing its prefilled state
        xs, total, active, routed = self.xs[self.layer_calls % self.xs.size(0)], 0.0, 0, 0
        self.layer_calls += 1
        for j, layer in enumerate(self.layers):
            start = now_ms()
            _, act, self.layer_states[j] = layer.step(xs[j], self.layer_states[j])
            total += now_ms() - start
            active += int(act.active.sum())
            routed += act.active.numel()
        return total / len(self.layers), active, routed

    def bytes_read_per_layer_step(self) -> int:
        """What one layer's step must read at this context: its weights, the occupied working-memory
        slots (keys and values) and the MD-EMA hidden states (the ring moves one input)."""
        layer = self.layers[0]
        weights = sum(p.numel() * p.element_size() for p in layer.parameters())
        gau = self.layer_states[0]["gau"]
        slots = min(gau["key"].size(1), self.context + 1)
        memory = slots * (gau["key"][:, :1].numel() * gau["key"].element_size()
                          + gau["value"][:, :1].numel() * gau["value"].element_size())
        ema = self.layer_states[0]["ema"]
        hidden = sum(ema[k].numel() * ema[k].element_size() for k in ("hidden", "lag_hidden") if k in ema)
        return weights + memory + hidden

    def row(self, timings) -> Dict:
        model_t, layer_t = timings["model"], timings["layer"]
        after = seqboat_states(self.model, self.incremental_state)
        constant = all(state_bytes(s) == b for s, b in zip(after + self.layer_states, self.layer_bytes * 2)) and all(
            state_shapes(s) == shp for s, shp in zip(after + self.layer_states, self.shapes * 2))
        return dict(
            model="seqboat", context=self.context,
            ms_per_token_layer=median(layer_t["times"]), ms_per_token_model=median(model_t["times"]),
            state_bytes_per_layer=self.layer_bytes[0], state_bytes_model=sum(self.layer_bytes),
            state_constant=constant,
            act_rate=model_t["active"] / max(model_t["routed"], 1),
            act_rate_layer_bench=layer_t["active"] / max(layer_t["routed"], 1),
            prefill_ms=self.prefill_ms, forward_ms=self.forward_ms,
            prefill_ratio=self.prefill_ms / self.forward_ms,
            bytes_read_per_layer_step=self.bytes_read_per_layer_step(),
            **self.fit_fields(model_t),
        )

    def fit_fields(self, model_t) -> Dict:
        fit = activation_fit(model_t["times"], model_t["per_step_active"])
        if fit is None:
            return {"ms_per_token_model_at_act50": None, "ms_per_token_model_all_skipped": None,
                    "ms_per_activated_layer": None}
        layers = len(self.layers)
        return {"ms_per_token_model_at_act50": fit["skip_ms"] + fit["extra_ms_per_active_layer"] * layers / 2,
                "ms_per_token_model_all_skipped": fit["skip_ms"],
                "ms_per_activated_layer": fit["extra_ms_per_active_layer"]}


def profile_seqboat_step(bench: SeqBoatContestant) -> None:
    """torch.profiler of one SeqBoat model step (whole model), continuing a benchmarked state."""
    from torch.profiler import ProfilerActivity, profile

    bench.model_step()  # warm
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        bench.model_step()
    print(f"\ntorch.profiler: one SeqBoat model step at context {bench.context} "
          f"({len(bench.layers)} layers), top ops by self CPU time:")
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=20))


# --------------------------------------------------------------------------- Transformer
def fill_kv_cache(attn, incremental_state: Dict, bsz: int, context: int, gen: torch.Generator) -> int:
    """Sets one fairseq MultiheadAttention's cache to ``context`` random keys/values, in the
    layout fairseq stores itself (``(B, heads, c, head_dim)``). Returns its size in bytes."""
    shape = (bsz, attn.num_heads, context, attn.head_dim)
    buffer = {"prev_key": torch.randn(shape, generator=gen).to(DEVICE),
              "prev_value": torch.randn(shape, generator=gen).to(DEVICE),
              "prev_key_padding_mask": None}
    attn._set_input_buffer(incremental_state, buffer)
    return state_bytes(buffer)


class TransformerContestant(Contestant):
    """KV caches of ``context`` random keys/values in every layer, then one token at a time."""

    name = "transformer"

    def __init__(self, model, context: int, args, gen: torch.Generator):
        self.model, self.context, self.layers = model, context, model.decoder.layers
        bsz, dim = args.batch_size, model.decoder.embed_dim
        steps = (args.warmup + args.steps) * (args.retries + 1)
        self.tokens = torch.randint(FIRST_TOKEN, VOCAB, (bsz, context + 2 * steps + 1), generator=gen).to(DEVICE)
        self.xs = torch.randn(steps + 1, len(self.layers), 1, bsz, dim, generator=gen).to(DEVICE)
        self.incremental_state: Dict = {}
        self.layer_bytes = [fill_kv_cache(layer.self_attn, self.incremental_state, bsz, context, gen)
                            for layer in self.layers]
        self.layer_calls = 0
        self.set_beam_orders(args, gen)

    def cached(self) -> int:
        return self.layers[0].self_attn._get_input_buffer(self.incremental_state)["prev_key"].size(2)

    def model_step(self):
        # the decoder keeps the last token; its position comes from the prefix length
        ms, _ = self.timed_model_call(self.tokens[:, :self.cached() + 1])
        return ms, 0, 0

    def layer_step(self):
        # every TransformerDecoderLayer alone on random inputs, on its own cache (which grows by one)
        xs, total = self.xs[self.layer_calls % self.xs.size(0)], 0.0
        self.layer_calls += 1
        for j, layer in enumerate(self.layers):
            start = now_ms()
            layer(xs[j], incremental_state=self.incremental_state, self_attn_mask=None, self_attn_padding_mask=None)
            total += now_ms() - start
        return total / len(self.layers), 0, 0

    def bytes_read_per_layer_step(self) -> int:
        """One layer's weights and its whole KV cache."""
        weights = sum(p.numel() * p.element_size() for p in self.layers[0].parameters())
        return weights + self.layer_bytes[0]

    def row(self, timings) -> Dict:
        return dict(
            model="transformer", context=self.context, bytes_read_per_layer_step=self.bytes_read_per_layer_step(),
            ms_per_token_layer=median(timings["layer"]["times"]),
            ms_per_token_model=median(timings["model"]["times"]),
            state_bytes_per_layer=self.layer_bytes[0], state_bytes_model=sum(self.layer_bytes),
            state_constant=None, act_rate=None, act_rate_layer_bench=None, prefill_ms=None,
            cached_tokens_at_end=self.cached(),
        )


def bench_context(benches: List[Contestant], args, quiet: "Quiet") -> List[Dict]:
    """Both timed phases (whole model, then per layer) of every contestant at one context."""
    timings, other = {b.name: {} for b in benches}, 0.0
    for phase in ("model", "layer"):
        result, _, cores = quiet.phase(lambda: (collect(benches, phase, args), None))
        other = max(other, cores)
        for name, rec in result.items():
            timings[name][phase] = rec
    rows = [b.row(timings[b.name]) for b in benches]
    for row in rows:
        row["other_cores"] = round(other, 3)
    return rows


# --------------------------------------------------------------------------- upstream emulation
def bench_upstream(model, context: int, args, gen: torch.Generator, quiet: "Quiet") -> Dict:
    layer = model.decoder.layers[0]
    dim = model.decoder.embed_tokens.embedding_dim
    truncation = layer.ema.truncation or context
    length = min(context, truncation)
    calls = args.upstream_warmup + args.upstream_steps
    xs = torch.randn(calls, length, args.batch_size, dim, generator=gen).to(DEVICE)

    def run():
        times = []
        for i in range(calls):
            start = now_ms()
            layer(xs[i])
            elapsed = now_ms() - start
            if i >= args.upstream_warmup:
                times.append(elapsed)
        return times, None

    times, _, other = quiet.phase(run)
    per_layer = median(times)
    return dict(
        model="seqboat_upstream_emulated", context=context,
        ms_per_token_layer=per_layer, ms_per_token_model=per_layer * len(model.decoder.layers),
        state_bytes_per_layer=None, state_bytes_model=None, state_constant=None,
        act_rate=None, act_rate_layer_bench=None, prefill_ms=None, other_cores=round(other, 3),
        recomputed_tokens=length,
    )


# --------------------------------------------------------------------------- main
def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--contexts", default="256,1024,4096,16384", help="comma-separated context lengths")
    p.add_argument("--layers", type=int, default=14, help="layers of every model (enwik8-base has 14)")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    p.add_argument("--steps", type=int, default=30, help="timed single-token steps per (model, context)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before the timed ones")
    p.add_argument("--upstream-steps", type=int, default=5, help="timed calls of the upstream emulation")
    p.add_argument("--upstream-warmup", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=1, help="sequences decoded together (rows report tokens/s)")
    p.add_argument("--beam", type=int, default=0,
                   help="beam-search rows: batch = BEAM, and every model step also reorders the decoding "
                        "state with a random beam order (index_select of every state tensor), as fairseq's "
                        "SequenceGenerator does after each step")
    p.add_argument("--device", default="cpu", help="cpu or cuda (timings synchronise the GPU)")
    p.add_argument("--heads", type=int, default=8, help="Transformer attention heads")
    p.add_argument("--ffn-dim", type=int, default=2464, help="Transformer FFN dim (4D = 2 x H)")
    add_threads_seed_args(p)
    add_quiet_args(p, wait_quiet=20.0, before="timed phase", retime=False)
    p.add_argument("--wait-budget", type=float, default=120.0, help="total seconds of such waiting per run")
    p.add_argument("--quiet-threshold", type=float, default=0.25)
    p.add_argument("--retries", type=int, default=1,
                   help="re-run a timed phase disturbed by other processes up to this many times "
                        "(the least disturbed attempt is kept)")
    p.add_argument("--profile", action="store_true",
                   help="always profile one SeqBoat step at the largest context (default: only if "
                        "the per-token time grows by more than 1.2x)")
    p.add_argument("--max-growth", type=float, default=1.2, help="target: ms/token(max ctx) / ms/token(min ctx)")
    p.add_argument("--max-layer-ms", type=float, default=1.0, help="target: SeqBoat ms per layer step")
    return p


def main(argv=None):
    global DEVICE
    args = get_parser().parse_args(argv)
    if args.beam:
        args.batch_size = args.beam
    DEVICE = torch.device(args.device)
    contexts = sorted(parse_int_list(args.contexts))
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in MODELS:
            raise SystemExit(f"unknown model {m!r}; expected a subset of {MODELS}")
    threads = args.threads if args.threads > 0 else (os.cpu_count() or 1)
    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    # > every position decoded; never below w (the layer refuses a working memory longer than that)
    max_len = max(max(contexts) + 3 * (args.warmup + args.steps) * (args.retries + 1) + 16, 4096)
    run_start = time.time()
    print(f"generation benchmark: contexts {contexts}, {args.layers} layers, batch {args.batch_size}, fp32, "
          f"eval, no_grad, {threads} threads, torch {torch.__version__}, {args.warmup} warm-up + "
          f"{args.steps} timed steps (median); CPU: {cpu_model()} ({os.cpu_count()} cores)", flush=True)

    rows: List[Dict] = []
    quiet = Quiet(args)
    quiet.wait()
    bandwidth = read_bandwidth_gbs()
    matvec = matvec_bandwidth_gbs()
    print(f"memory read bandwidth (torch sum over 512 MiB): {bandwidth:.1f} GB/s; torch's one-row F.linear "
          f"reads its weight at {matvec:.1f} GB/s", flush=True)
    common = {"bench": "generation", "layers": args.layers, "batch": args.batch_size, "beam": args.beam,
              "dtype": "float32",
              "threads": threads, "steps": args.steps}
    with torch.no_grad():
        seqboat = transformer = seqboat_bench = None
        if "seqboat" in models or "upstream" in models:
            seqboat, _ = build_lm("--arch", SEQBOAT_ARCH, "--decoder-layers", str(args.layers),
                                  "--dropout", "0", "--tokens-per-sample", str(max_len),
                                  "--max-target-positions", str(max_len))
            seqboat_params = sum(p.numel() for p in seqboat.parameters())
            first = seqboat.decoder.layers[0]
            print(f"seqboat: --arch {SEQBOAT_ARCH}, {seqboat_params:,} parameters, D={first.embed_dim}, "
                  f"H={first.gau.hdim}, Z={first.gau.zdim}, N={first.ema.ndim}, w={first.window}, "
                  f"truncation={first.ema.truncation}", flush=True)
        if "transformer" in models:
            transformer, _ = build_lm("--arch", "transformer_lm", "--decoder-embed-dim", "616",
                                      "--decoder-input-dim", "616", "--decoder-output-dim", "616",
                                      "--decoder-ffn-embed-dim", str(args.ffn_dim),
                                      "--decoder-attention-heads", str(args.heads),
                                      "--decoder-layers", str(args.layers), "--dropout", "0",
                                      "--attention-dropout", "0", "--activation-dropout", "0",
                                      "--tokens-per-sample", str(max_len), "--max-target-positions", str(max_len))
            transformer_params = sum(p.numel() for p in transformer.parameters())
            print(f"transformer: --arch transformer_lm, {transformer_params:,} parameters, D=616, "
                  f"ffn={args.ffn_dim}, heads={args.heads}", flush=True)

        for context in contexts if ("seqboat" in models or "transformer" in models) else []:
            benches: List[Contestant] = []
            if "seqboat" in models:
                benches.append(SeqBoatContestant(seqboat, context, args, gen))
            if "transformer" in models:
                benches.append(TransformerContestant(transformer, context, args, gen))
            for row in bench_context(benches, args, quiet):
                row["tokens_per_s"] = args.batch_size * 1000.0 / row["ms_per_token_model"]
                # memory-bound floor of a layer step: the bytes it must read at the machine's bandwidth
                row["read_bandwidth_gbs"] = bandwidth
                row["floor_ms_per_layer"] = row["bytes_read_per_layer_step"] / (bandwidth * 1e6)
                row["matvec_bandwidth_gbs"] = matvec
                row["matvec_floor_ms_per_layer"] = row["bytes_read_per_layer_step"] / (matvec * 1e6)
                if row["model"] == "seqboat":
                    from seqboat_fairseq.modules.linear import route_decisions

                    row.update(arch=SEQBOAT_ARCH, params=seqboat_params, linear_routes=sorted(
                        f"{rows}x{fin}->{fout}: {'column' if col else 'F.linear'}"
                        for (rows, fin, fout, _, _, _), col in route_decisions().items()))
                else:
                    row.update(arch="transformer_lm", params=transformer_params)
                rows.append(row)
                emit({**common, **row})
            seqboat_bench = benches[0] if "seqboat" in models else None  # kept for --profile
            del benches
        for context in contexts if "upstream" in models else []:
            row = bench_upstream(seqboat, context, args, gen, quiet)
            row.update(arch=SEQBOAT_ARCH, params=seqboat_params, note="emulation: parallel layer forward over "
                       "min(c, truncation) tokens per generated token, x layers")
            rows.append(row)
            emit({**common, **row})

        # ------------------------------------------------------------------ table
        order = {"seqboat": 0, "transformer": 1, "seqboat_upstream_emulated": 2}
        rows.sort(key=lambda r: (order[r["model"]], r["context"]))
        print()
        print(format_table(
            ["model", "context", "ms/tok layer", "floor ms/layer", "matvec floor", f"ms/step model ({args.layers}L)",
             "tokens/s",
             "@50% act",
             "prefill ms",
             "prefill/fwd",
             "state/layer", "state bytes/layer", "state const", "act rate", "other cores"],
            [[r["model"], r["context"], r["ms_per_token_layer"], r.get("floor_ms_per_layer"),
              r.get("matvec_floor_ms_per_layer"), r["ms_per_token_model"],
              r.get("tokens_per_s"),
              r.get("ms_per_token_model_at_act50"), r["prefill_ms"], r.get("prefill_ratio"),
              human_bytes(r["state_bytes_per_layer"]), r["state_bytes_per_layer"], r["state_constant"],
              r["act_rate"], r["other_cores"]] for r in rows]))
        if "upstream" in models:
            print("(seqboat_upstream_emulated: an emulation of upstream's recompute-the-window decoding, "
                  "model = layers x layer time)")
        print("(other cores: CPU used by other processes while the row was timed; 0 = quiet machine)")
        disturbed = [r for r in rows if r["other_cores"] >= args.quiet_threshold]
        if disturbed:
            print(f"WARNING: other processes used >= {args.quiet_threshold} cores during "
                  f"{len(disturbed)} row(s); their timings are inflated (rerun on a quiet machine, "
                  f"or with --threads 1)")

        # ------------------------------------------------------------------ summary
        print()
        by = {(r["model"], r["context"]): r for r in rows}
        summary: List[Dict] = []
        lo, hi = contexts[0], contexts[-1]
        if ("seqboat", lo) in by and ("seqboat", hi) in by:
            growth = by["seqboat", hi]["ms_per_token_model"] / by["seqboat", lo]["ms_per_token_model"]
            growth_layer = by["seqboat", hi]["ms_per_token_layer"] / by["seqboat", lo]["ms_per_token_layer"]
            a_lo, a_hi = by["seqboat", lo]["ms_per_token_model_at_act50"], by["seqboat", hi]["ms_per_token_model_at_act50"]
            growth_act50 = a_hi / a_lo if a_lo and a_hi else None
            summary.append(dict(check="seqboat_growth", value=growth, value_layer=growth_layer,
                                value_at_act50=growth_act50,
                                target=f"<= {args.max_growth}",
                                met=(growth_act50 if growth_act50 is not None else growth) <= args.max_growth,
                                text=f"SeqBoat ms/token at {hi} / at {lo}: model {growth:.2f}x, "
                                     f"per layer {growth_layer:.2f}x, model at equal (50%) activation "
                                     f"{format_cell(growth_act50)}x (target <= {args.max_growth})"))
            sizes = {by["seqboat", c]["state_bytes_per_layer"] for c in contexts}
            constant = len(sizes) == 1 and all(by["seqboat", c]["state_constant"] for c in contexts)
            summary.append(dict(check="seqboat_state_constant", value=sorted(sizes), target="constant in context",
                                met=constant,
                                text=f"SeqBoat decode state per layer: {', '.join(str(s) for s in sorted(sizes))} "
                                     f"bytes at contexts {contexts} (target: constant)"))
        for c in contexts:
            if ("seqboat", c) in by:
                layer_ms = by["seqboat", c]["ms_per_token_layer"]
                summary.append(dict(check="seqboat_layer_step_ms", context=c, value=layer_ms,
                                    target=f"<= {args.max_layer_ms}", met=layer_ms <= args.max_layer_ms,
                                    matvec_floor_ms=by["seqboat", c].get("matvec_floor_ms_per_layer"),
                                    text=f"context {c:>6}: SeqBoat ms per layer step {layer_ms:.3f} "
                                         f"(target <= {args.max_layer_ms}; an activated step's bytes take "
                                         f"{format_cell(by['seqboat', c].get('matvec_floor_ms_per_layer'))} ms "
                                         f"through torch's one-row F.linear here)"))
            if ("seqboat", c) in by and ("transformer", c) in by:
                s, t = by["seqboat", c], by["transformer", c]
                speedup = t["ms_per_token_model"] / s["ms_per_token_model"]
                speedup_layer = t["ms_per_token_layer"] / s["ms_per_token_layer"]
                mem = t["state_bytes_per_layer"] / s["state_bytes_per_layer"]
                target, met = None, None  # targets: at least as fast at 256, >= 10x at 16k
                if c >= 16384:
                    target, met = ">= 10", speedup >= 10.0
                elif c <= 256:
                    target, met = ">= 1", speedup >= 1.0
                summary.append(dict(
                    check="speedup_vs_transformer", context=c, value=speedup, value_layer=speedup_layer,
                    kv_over_seqboat_state=mem, target=target, met=met,
                    text=f"context {c:>6}: Transformer / SeqBoat ms/token: model {speedup:.2f}x, per layer "
                         f"{speedup_layer:.2f}x; Transformer KV cache / SeqBoat state per layer {mem:.2f}x"
                         + (f" (target {target})" if target else "")))
            if ("seqboat", c) in by and ("seqboat_upstream_emulated", c) in by:
                s, u = by["seqboat", c], by["seqboat_upstream_emulated", c]
                ratio = u["ms_per_token_layer"] / s["ms_per_token_layer"]
                summary.append(dict(check="speedup_vs_upstream_emulated", context=c, value_layer=ratio,
                                    text=f"context {c:>6}: upstream-style (emulated) / SeqBoat ms/token per "
                                         f"layer: {ratio:.1f}x"))
        for item in summary:
            compared = {"speedup_vs_transformer": ("seqboat", "transformer"), "seqboat_layer_step_ms": ("seqboat",),
                        "speedup_vs_upstream_emulated": ("seqboat", "seqboat_upstream_emulated")}
            involved = [r for r in rows if r["context"] == item["context"] and r["model"] in compared[item["check"]]] \
                if "context" in item else [r for r in rows if r["model"] == "seqboat"]
            item["disturbed"] = any(r["other_cores"] >= args.quiet_threshold for r in involved)
            met = item.get("met")
            flag = "" if met is None else ("  [target met]" if met else "  [TARGET NOT MET]")
            if item["disturbed"] and item["check"] != "seqboat_state_constant":
                flag += "  (timings disturbed by other processes)"
            print(item["text"] + flag)
        for item in summary:
            emit({"bench": "generation_summary", **{k: v for k, v in item.items() if k != "text"}})

        growth_item = next((i for i in summary if i["check"] == "seqboat_growth"), None)
        if seqboat_bench is not None and (args.profile or (growth_item is not None and not growth_item["met"])):
            profile_seqboat_step(seqboat_bench)
    print(f"\ntotal wall time {time.time() - run_start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
