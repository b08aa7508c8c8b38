"""Where a training step's time goes: torch.profiler over one LM step, attributed to source.

Builds one benchmark model exactly like ``bench/train_step.py`` (same flags), runs warm-up
steps, then profiles one forward + backward and prints

1. the top aten operators by self CPU time (with input shapes);
2. forward + backward CPU time attributed to the innermost frame in ``seqboat_fairseq/``
   (or ``fairseq/``, ``torch/nn``) of the Python stack that issued each forward op; a
   backward node is charged to the frame of the forward op that created it (matched by
   the autograd sequence number). Times are self CPU of the ops (forward) and inclusive CPU
   of each backward node, in ms summed over threads.

Run from the repository root::

    python bench/profile_step.py --model seqboat --seq-len 4096
"""

import argparse
import collections
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    MODEL_KINDS, REPO_ROOT, add_profile_args, add_quiet_args, build_model, code_revision, lm_loss_backward,
    random_tokens, resolve_model_shape, setup_torch, wait_until_quiet,
)


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="seqboat", choices=MODEL_KINDS)
    add_profile_args(p)
    add_quiet_args(p, wait_quiet=30.0, before="profiled step", retime=False)
    return p


PREFERRED = ("seqboat_fairseq/", "fairseq/", "torch/nn/")


def is_python_frame(name: str) -> bool:
    return ".py(" in name and "): " in name


def short_frame(name: str) -> str:
    """'.../seqboat_fairseq/modules/ema.py(97): kernel' -> 'seqboat_fairseq/modules/ema.py:kernel'."""
    path, _, func = name.partition("): ")
    path = path.rsplit("(", 1)[0]
    for wanted in PREFERRED:
        at = path.find(wanted)
        if at >= 0:
            return f"{path[at:]}:{func}"
    return f"{path}:{func}"


def source_frame(event, cache) -> str:
    """Innermost enclosing Python frame of the plugin (else fairseq, else torch.nn) of an op."""
    if event.id in cache:
        return cache[event.id]
    frames = []
    parent = event.cpu_parent
    while parent is not None:
        if is_python_frame(parent.name):
            frames.append(parent.name)
        parent = parent.cpu_parent
    result = "<other>"
    for wanted in PREFERRED:
        hit = next((f for f in frames if wanted in f), None)
        if hit is not None:
            result = short_frame(hit)
            break
    cache[event.id] = result
    return result


def main():
    args = resolve_model_shape(get_parser().parse_args())
    setup_torch(args.threads, args.seed)
    from torch.profiler import ProfilerActivity, profile

    model, task = build_model(args, args.model, args.seq_len)
    model.train()
    tokens = random_tokens(task, args.seq_len)

    def step():
        model.zero_grad(set_to_none=True)
        lm_loss_backward(model, tokens)

    for _ in range(args.warmup):
        step()
    if args.wait_quiet > 0:
        wait_until_quiet(args.wait_quiet, log=lambda m: print(m, flush=True))
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_stack=True) as prof:
        step()
    wall = (time.perf_counter() - start) * 1000.0
    print(f"# profiled one fwd+bwd step of {args.model} at L={args.seq_len}: {wall:.0f} ms wall (with profiler); "
          f"code revision {code_revision()}")

    print(prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=28, max_shapes_column_width=70))

    events = prof.events()
    frame_of_seq, cache = {}, {}
    forward = collections.Counter()
    backward = collections.Counter()
    in_backward = set()
    for ev in events:  # ops running inside a backward node belong to the backward pass
        if ev.name.startswith("autograd::engine::evaluate_function:"):
            stack = list(ev.cpu_children)
            while stack:
                child = stack.pop()
                in_backward.add(child.id)
                stack.extend(child.cpu_children)
    for ev in events:
        if not ev.name.startswith("aten::") or ev.id in in_backward:
            continue
        frame = source_frame(ev, cache)
        forward[frame] += ev.self_cpu_time_total / 1000.0
        if ev.sequence_nr is not None and ev.sequence_nr >= 0:
            frame_of_seq.setdefault(ev.sequence_nr, frame)
    for ev in events:
        if ev.name.startswith("autograd::engine::evaluate_function:") and ev.sequence_nr is not None:
            backward[frame_of_seq.get(ev.sequence_nr, "<unattributed>")] += ev.cpu_time_total / 1000.0
    frames = sorted(set(forward) | set(backward), key=lambda f: -(forward[f] + backward[f]))
    total = sum(forward.values()) + sum(backward.values())
    print(f"\nCPU ms by source function (forward self time + backward nodes), total {total:.0f} ms")
    print(f"{'fwd_ms':>9} {'bwd_ms':>9} {'share':>6}  function")
    for f in frames[: args.top]:
        print(f"{forward[f]:9.1f} {backward[f]:9.1f} {100 * (forward[f] + backward[f]) / max(total, 1e-9):5.1f}%  "
              f"{f.replace(REPO_ROOT + os.sep, '')}")


if __name__ == "__main__":
    main()
