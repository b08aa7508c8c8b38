"""Where a training step's time goes: torch.profiler over one LM step, attributed to source.

Builds one benchmark model exactly like ``bench/train_step.py`` (same flags), runs warm-up
steps, then profiles one forward + backward and prints

1. the top aten operators by self CPU time (with input shapes);
2. forward + backward CPU time attributed to the innermost frame in ``seqboat_fairseq/``
   (or ``fairseq/``, ``torch/nn``) of the Python stack that issued each forward op; a
   backward node is charged to the frame of the forward op that created it (matched by
   the autograd sequence number). Times are self CPU of the ops (forward) and inclusive CPU
   of each backward node, in ms summed over threads;
3. the same time split into the model's components (:data:`COMPONENTS`: MD-EMA, routing + compression,
   projections, attention, rest), labelled from the bench side (:func:`component_labels`: module hooks and
   wrappers installed for the profiled step only; the library is not edited). bench/paper_efficiency.py
   prints this split for each of its rows.

Run from the repository root::

    python bench/profile_step.py --model seqboat --seq-len 4096
"""

import argparse
import collections
import contextlib
import os
import sys
import time
from typing import Dict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    MODEL_KINDS, REPO_ROOT, add_profile_args, add_quiet_args, build_model, code_revision, cpu_model,
    lm_loss_backward,
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


# --------------------------------------------------------------------------- component split
# (component, what it covers); "rest": everything not inside a labelled part (embedding, norms, the
# always-on path and residuals, the output layer and loss, the FFN, layout copies between the parts)
COMPONENTS = ("md_ema", "routing", "projections", "attention", "rest")
COMPONENT_HELP = {
    "md_ema": "MultiHeadEMA modules (forward and their backward nodes)",
    "routing": "the router (LatentConfigurator) and the GAU's plan_compression / compress / extract",
    "projections": "GatedAttentionUnit.project (in_proj, SiLU, q/k, rotary) and .output (gated out_proj); "
                   "the layers' hx_proj",
    "attention": "local_attention of the GAU (windowed / chunked / full); Transformers: their MultiheadAttention "
                 "modules (projections included)",
    "rest": "every other op",
}
LABEL_PREFIX = "component::"


@contextlib.contextmanager
def component_labels(model):
    """Inside the block, the parts of ``model`` named in :data:`COMPONENT_HELP` run inside
    ``record_function("component::<name>")`` ranges (module hooks, instance-level method wrappers and
    wrappers of the GAU module's functions), so a profile attributes their ops (:func:`component_split`).
    Yields the set of components that were found in the model. Everything is restored on exit."""
    from torch.autograd.profiler import record_function

    import seqboat_fairseq.modules.gau as gau_module

    found, handles, restore = set(), [], []

    def wrap(fn, component):
        def wrapped(*args, **kwargs):
            with record_function(LABEL_PREFIX + component):
                return fn(*args, **kwargs)
        return wrapped

    def hook(module, component):
        ranges = []

        def enter(*_):
            ranges.append(record_function(LABEL_PREFIX + component))
            ranges[-1].__enter__()

        def leave(*_):
            ranges.pop().__exit__(None, None, None)

        handles.extend([module.register_forward_pre_hook(enter), module.register_forward_hook(leave)])
        found.add(component)

    for name, module in model.named_modules():
        kind = type(module).__name__
        if kind == "MultiHeadEMA":
            hook(module, "md_ema")
        elif kind == "LatentConfigurator":
            hook(module, "routing")
        elif kind == "MultiheadAttention":  # torch's and fairseq's
            hook(module, "attention")
        elif name.endswith("hx_proj"):
            hook(module, "projections")
        elif kind == "GatedAttentionUnit":
            for method in ("project", "output"):
                if hasattr(module, method):
                    setattr(module, method, wrap(getattr(module, method), "projections"))
                    restore.append((module, method, None))
                    found.add("projections")
    if any(type(m).__name__ == "GatedAttentionUnit" for m in model.modules()):
        for fn_name, component in (("plan_compression", "routing"), ("compress", "routing"),
                                   ("extract", "routing"), ("local_attention", "attention")):
            if hasattr(gau_module, fn_name):
                restore.append((gau_module, fn_name, getattr(gau_module, fn_name)))
                setattr(gau_module, fn_name, wrap(getattr(gau_module, fn_name), component))
                found.add(component)
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()
        for owner, attr, original in reversed(restore):
            if original is None:
                delattr(owner, attr)  # the instance wrapper goes, the class method shows again
            else:
                setattr(owner, attr, original)


def component_of(event, cache) -> str:
    """The component label innermost around an op (``rest`` if none)."""
    if event.id in cache:
        return cache[event.id]
    parent, result = event.cpu_parent, "rest"
    while parent is not None:
        if parent.name.startswith(LABEL_PREFIX):
            result = parent.name[len(LABEL_PREFIX):]
            break
        parent = parent.cpu_parent
    cache[event.id] = result
    return result


def backward_event_ids(events) -> set:
    """Ids of the profiler events that run inside a backward node (every descendant of an
    ``autograd::engine::evaluate_function:`` event): they belong to the backward pass."""
    ids = set()
    for ev in events:
        if ev.name.startswith("autograd::engine::evaluate_function:"):
            stack = list(ev.cpu_children)
            while stack:
                child = stack.pop()
                ids.add(child.id)
                stack.extend(child.cpu_children)
    return ids


def component_split(events) -> Dict[str, Dict[str, float]]:
    """``{component: {"fwd_ms", "bwd_ms"}}`` of a profiled step's events (under :func:`component_labels`):
    forward = self CPU time of the aten ops inside the component's ranges; backward = inclusive CPU time of
    each backward node, charged to the component of the forward op that created it (autograd sequence
    number), as in this script's source-function table."""
    split = {c: {"fwd_ms": 0.0, "bwd_ms": 0.0} for c in COMPONENTS}
    in_backward, comp_of_seq, cache = backward_event_ids(events), {}, {}
    for ev in events:
        if ev.id in in_backward or ev.name.startswith("autograd::engine::evaluate_function:"):
            continue
        if ev.sequence_nr is not None and ev.sequence_nr >= 0:
            comp_of_seq.setdefault(ev.sequence_nr, component_of(ev, cache))
        if ev.name.startswith("aten::"):
            split.setdefault(component_of(ev, cache), {"fwd_ms": 0.0, "bwd_ms": 0.0})["fwd_ms"] += \
                ev.self_cpu_time_total / 1000.0
    for ev in events:
        if ev.name.startswith("autograd::engine::evaluate_function:") and ev.sequence_nr is not None:
            split[comp_of_seq.get(ev.sequence_nr, "rest")]["bwd_ms"] += ev.cpu_time_total / 1000.0
    return split


def profile_components(model, step) -> Dict[str, Dict[str, float]]:
    """Runs ``step()`` once under the profiler with :func:`component_labels` and returns
    :func:`component_split` plus, per component, ``share`` (of the labelled + rest CPU time) and the
    set of components found in the model under ``"_found"``."""
    from torch.profiler import ProfilerActivity, profile

    with component_labels(model) as found:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
    split = component_split(prof.events())
    total = sum(v["fwd_ms"] + v["bwd_ms"] for v in split.values())
    for v in split.values():
        v["share"] = (v["fwd_ms"] + v["bwd_ms"]) / total if total > 0 else float("nan")
    split["_found"] = sorted(found)
    return split


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
          f"code revision {code_revision()}; CPU: {cpu_model()} ({os.cpu_count()} cores)")

    print(prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=28, max_shapes_column_width=70))

    events = prof.events()
    split_step = profile_components(model, step)
    frame_of_seq, cache = {}, {}
    forward = collections.Counter()
    backward = collections.Counter()
    in_backward = backward_event_ids(events)
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
    print("\nCPU ms by component (a second profiled step, with component labels)")
    print(f"{'fwd_ms':>9} {'bwd_ms':>9} {'share':>6}  component")
    for c in COMPONENTS:
        v = split_step[c]
        print(f"{v['fwd_ms']:9.1f} {v['bwd_ms']:9.1f} {100 * v['share']:5.1f}%  {c}: {COMPONENT_HELP[c]}")


if __name__ == "__main__":
    main()
