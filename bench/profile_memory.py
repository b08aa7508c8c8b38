"""Where a training step's peak memory comes from: every allocation of one LM step, live at the peak.

Builds one benchmark model exactly like ``bench/train_step.py`` (same flags; ``<kind>+ckpt`` adds
``--checkpoint-activations``), runs warm-up steps, then records one forward + backward under
``torch.profiler`` with ``profile_memory=True``. From the allocation events (time, size, address)
it rebuilds the bytes allocated during the step over time, finds the peak and prints what is live
at that moment:

1. the peak (MiB allocated by the step on top of parameters and inputs), when it happens (forward,
   recomputation or backward, inside which op) and how it splits into forward allocations still
   alive (what autograd keeps for backward, plus outputs), allocations of the recomputation
   (``+ckpt``: a layer's forward run again inside the backward pass) and backward allocations
   (gradients, temporaries);
2. the live bytes grouped by where they were allocated: forward and recomputed allocations by the
   innermost ``seqboat_fairseq/`` (else ``fairseq/``, ``torch/nn``) frame and the aten op; backward
   allocations by the backward node and the frame of the forward op that created it (matched by
   the autograd sequence number, as in ``profile_step.py``);
3. the largest single live allocations.

The profiler's counts are the allocator's bytes, not RSS: ``train_step.py``'s ``delta_mb`` adds
allocator slack and pages glibc has not returned.

Run from the repository root::

    python bench/profile_memory.py --model seqboat --seq-len 4096
"""

import argparse
import collections
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    MB, add_profile_args, build_model, code_revision, lm_loss_backward, random_tokens, resolve_model_shape, setup_torch,
)
from profile_step import is_python_frame, short_frame  # noqa: E402
from train_step import split_kind  # noqa: E402

BACKWARD_PREFIX = "autograd::engine::evaluate_function: "
PREFERRED = ("seqboat_fairseq/", "fairseq/", "torch/nn/")


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="seqboat", help="a train_step.py model kind, optionally with +ckpt and/or +rgau")
    add_profile_args(p)
    return p


def frame_of(stack) -> str:
    """Innermost preferred Python frame of a stack of profiler events or their names (outermost first)."""
    names = [getattr(e, "name", e) for e in stack]
    frames = [name for name in reversed(names) if is_python_frame(name)]
    for wanted in PREFERRED:
        hit = next((f for f in frames if wanted in f), None)
        if hit is not None:
            return short_frame(hit)
    return "<other>"


def split_at_backward_node(stack):
    """``(innermost backward node or None, the events below it)``. An op with Python frames below its
    backward node is a forward op run during backward (the recomputation of --checkpoint-activations)."""
    at = max((i for i, e in enumerate(stack) if e.name.startswith(BACKWARD_PREFIX)), default=-1)
    return (stack[at] if at >= 0 else None), stack[at + 1:]


def runs_forward_code(stack) -> bool:
    node, below = split_at_backward_node(stack)
    return node is None or any(is_python_frame(e.name) for e in below)


def main():
    args = resolve_model_shape(get_parser().parse_args())
    setup_torch(args.threads, args.seed)
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    kind, flags = split_kind(args.model)
    model, task = build_model(args, kind, args.seq_len, *flags)
    model.train()
    tokens = random_tokens(task, args.seq_len)

    def step():
        lm_loss_backward(model, tokens)

    for _ in range(args.warmup):
        model.zero_grad(set_to_none=True)
        step()
    model.zero_grad(set_to_none=True)  # outside the profile: the step starts with no gradients
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, with_stack=True, record_shapes=True) as prof:
        step()
    wall = (time.perf_counter() - start) * 1000.0

    # every allocation / free with the stack of event names above it
    events, seq_frame = [], {}

    def visit(event, stack):
        kind_ = event.typed[0]
        if kind_ == _EventType.Allocation:
            events.append((event.start_time_ns, event.typed[1].alloc_size, event.typed[1].ptr, stack))
            return
        if kind_ == _EventType.TorchOp and event.name.startswith("aten::") and runs_forward_code(stack):
            seq = event.typed[1].sequence_number
            if seq is not None and seq >= 0:
                seq_frame.setdefault(seq, frame_of(stack))
        for child in event.children:
            visit(child, stack + (event,))

    for root in prof.profiler.kineto_results.experimental_event_tree():
        visit(root, ())
    events.sort(key=lambda e: e[0])

    def origin(stack):
        """('fwd' | 'recomp' | 'bwd', group label) of an allocation."""
        node, below = split_at_backward_node(stack)
        op = next((e.name for e in reversed(stack) if e.typed[0] == _EventType.TorchOp), "<no op>")
        if node is None:
            return "fwd", f"{frame_of(stack)}  [{op}]"
        if runs_forward_code(stack):
            return "recomp", f"{frame_of(below)}  [{op}]"
        seq = node.typed[1].sequence_number if node.typed[0] == _EventType.TorchOp else None
        return "bwd", f"{node.name[len(BACKWARD_PREFIX):]} <- {seq_frame.get(seq, '<unattributed>')}"

    live, total, peak, peak_at = {}, 0, 0, None
    snapshot = {}
    for i, (t, size, ptr, stack) in enumerate(events):
        if size > 0:
            live[ptr] = (size, stack)
        else:
            live.pop(ptr, None)
        total += size
        if total > peak:
            peak, peak_at = total, i
            snapshot = dict(live)
    t_peak, _, _, stack_peak = events[peak_at]
    phase, where = origin(stack_peak)

    print(f"# memory profile of one fwd+bwd step of {args.model} at L={args.seq_len} (D={args.dim}, "
          f"{args.layers} layers): {wall:.0f} ms wall with the profiler; code revision {code_revision()}")
    phase_names = {"fwd": "forward pass", "recomp": "recomputation (during backward)", "bwd": "backward pass"}
    print(f"peak: {peak / MB:.1f} MiB allocated by the step, reached in the {phase_names[phase]} at {where}")
    by_phase = collections.Counter()
    groups = collections.Counter()
    counts = collections.Counter()
    for size, stack in snapshot.values():
        ph, label = origin(stack)
        by_phase[ph] += size
        groups[(ph, label)] += size
        counts[(ph, label)] += 1
    print(f"live at the peak: {sum(by_phase.values()) / MB:.1f} MiB = forward allocations still alive "
          f"{by_phase['fwd'] / MB:.1f} MiB + recomputation {by_phase['recomp'] / MB:.1f} MiB + backward "
          f"allocations {by_phase['bwd'] / MB:.1f} MiB ({len(snapshot)} blocks)")
    print(f"\ntop {args.top} groups live at the peak")
    print(f"{'MiB':>8} {'share':>6} {'blocks':>6}  phase  where")
    for (ph, label), size in groups.most_common(args.top):
        print(f"{size / MB:8.1f} {100 * size / max(peak, 1):5.1f}% {counts[(ph, label)]:6d}  {ph:6}  "
              f"{label.replace(os.getcwd() + os.sep, '')}")
    print("\nlargest single blocks live at the peak")
    for size, stack in sorted(snapshot.values(), key=lambda v: -v[0])[: min(args.top, 10)]:
        ph, label = origin(stack)
        print(f"{size / MB:8.1f}  {ph:6}  {label}")


if __name__ == "__main__":
    main()
