"""The README's PyTorch example runs as printed, and shows what it says: the step-by-step decode
equals the parallel forward."""

import contextlib
import io
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_example() -> str:
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    blocks = re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)
    assert len(blocks) == 1, f"README.md should hold exactly one python block, found {len(blocks)}"
    return blocks[0]


def test_readme_has_a_short_example_and_stays_short():
    code = readme_example()
    assert "SeqBoatLayer" in code and ".step(" in code
    assert len(code.strip().splitlines()) <= 15
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        assert len(f.read().splitlines()) <= 250


def test_readme_example_runs_and_decoding_equals_the_forward():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(readme_example(), "README.md", "exec"), {"__name__": "readme_example"})
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("torch.Size([100, 2, 64])")
    rate = float(lines[0].split()[-1])
    assert 0.0 < rate < 1.0  # the router skips some tokens: the comparison covers compression
    assert lines[-1] == "True", out.getvalue()
