"""Packaging: the ranges setup.py declares, the exact stack constraints.txt pins inside them, and
the import-time check that replaces a hard fairseq requirement (no fairseq distribution is an
install requirement: setup.py says why). The install into an existing environment itself (torch and
fairseq first, then ``pip install -e .``, nothing replaced) is the second step of ``.ci/run``."""

import os
import re
import subprocess
import sys
import textwrap

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from conftest import REPO_ROOT

FAIRSEQ_DISTRIBUTIONS = {"fairseq", "ve-fairseq", "fairseq-fixed"}


@pytest.fixture(scope="module")
def setup_kwargs():
    """The arguments setup.py passes to setup(), without installing anything."""
    import setuptools

    captured = {}
    original, cwd = setuptools.setup, os.getcwd()
    setuptools.setup = lambda **kwargs: captured.update(kwargs)
    try:
        os.chdir(REPO_ROOT)
        with open("setup.py", encoding="utf-8") as f:
            exec(compile(f.read(), "setup.py", "exec"), {"__name__": "__main__"})
    finally:
        setuptools.setup = original
        os.chdir(cwd)
    return captured


def requirements(kwargs, *extras):
    found = [Requirement(r) for r in kwargs["install_requires"]]
    for extra in extras:
        found += [Requirement(r) for r in kwargs["extras_require"][extra]]
    return found


def test_install_requires_are_ranges_without_a_fairseq_distribution(setup_kwargs):
    reqs = {canonicalize_name(r.name): r for r in requirements(setup_kwargs)}
    assert not FAIRSEQ_DISTRIBUTIONS & set(reqs), "a user's own fairseq would get a second copy"
    assert {"torch", "numpy", "tensorboardx"} <= set(reqs)
    for name, req in reqs.items():
        assert not any(s.operator in ("==", "===") for s in req.specifier), f"{name} is pinned: {req}"
    assert not reqs["numpy"].specifier.contains("2.0.0"), "fairseq 0.12 calls np.compat (NumPy < 2)"
    assert reqs["torch"].specifier.contains("2.13.0") and reqs["torch"].specifier.contains("2.6.0")
    # the convenience extra: one fairseq 0.12 build for those who have none
    extra = [Requirement(r) for r in setup_kwargs["extras_require"]["fairseq"]]
    assert [r.name for r in extra] == ["ve-fairseq"] and extra[0].specifier.contains("0.12.3")


def read_constraints():
    pins = {}
    with open(os.path.join(REPO_ROOT, "constraints.txt"), encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
                assert match, f"constraints.txt: not an exact pin: {line!r}"
                pins[canonicalize_name(match[1])] = Version(match[2])
    return pins


def test_constraints_pin_every_requirement_inside_its_range(setup_kwargs):
    pins = read_constraints()
    for req in requirements(setup_kwargs, "test", "fairseq"):
        name = canonicalize_name(req.name)
        assert name in pins, f"constraints.txt does not pin {req.name}"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} is outside {req}"
    # one fairseq, and the CPU torch these machines carry (the wheel is 2.13.0+cpu)
    assert len(FAIRSEQ_DISTRIBUTIONS & set(pins)) == 1
    assert pins["torch"] == Version("2.13.0")


def import_plugin(code="import seqboat_fairseq", fake_fairseq=None, tmp_path=None):
    """Runs ``code`` in a fresh interpreter (this checkout first on the path); returns (rc, stderr)."""
    env = dict(os.environ)
    path = [REPO_ROOT]
    if fake_fairseq is not None:
        package = tmp_path / "fake" / "fairseq"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(textwrap.dedent(fake_fairseq))
        path.insert(0, str(tmp_path / "fake"))
    env["PYTHONPATH"] = os.pathsep.join(path + [env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    return proc.returncode, proc.stderr


def last_error(stderr):
    """The final exception's message (its first line onwards)."""
    return stderr[stderr.rindex("ImportError: "):] if "ImportError: " in stderr else stderr


def test_without_fairseq_the_import_says_how_to_install_one():
    rc, stderr = import_plugin("import sys; sys.modules['fairseq'] = None; import seqboat_fairseq")
    message = last_error(stderr)
    assert rc != 0 and message.startswith("ImportError: seqboat-fairseq needs fairseq 0.12.x"), stderr
    assert "the module `fairseq` is not installed" in message
    for advice in ("ve-fairseq>=0.12.3,<0.13", ".[fairseq]", "fairseq-fixed", "from source", "numpy<2"):
        assert advice in message, advice


def test_another_fairseq_version_is_refused_by_name(tmp_path):
    rc, stderr = import_plugin(fake_fairseq='__version__ = "0.10.2"\n', tmp_path=tmp_path)
    message = last_error(stderr)
    assert rc != 0 and "the installed fairseq is 0.10.2" in message and "ve-fairseq" in message, stderr


def test_a_fairseq_that_fails_to_import_is_reported_with_its_error(tmp_path):
    # the official fairseq 0.12.2 on Python 3.11: a dataclass error while importing
    broken = 'raise ValueError("mutable default <class \'fairseq.dataclass.configs.CommonConfig\'>")\n'
    rc, stderr = import_plugin(fake_fairseq=broken, tmp_path=tmp_path)
    message = last_error(stderr)
    assert rc != 0 and "`import fairseq` failed: ValueError: mutable default" in message, stderr


def test_the_plugin_works_without_torchaudio():
    """Every fairseq 0.12 on PyPI requires torchaudio, whose native library may not load (it does
    not beside torch 2.13): the plugin and fairseq's LM tools never import it."""
    code = textwrap.dedent("""
        import os, sys, tempfile
        sys.modules["torchaudio"] = None  # any import of it fails
        import torch
        import seqboat_fairseq
        import fairseq_cli.train, fairseq_cli.eval_lm, fairseq_cli.interactive, fairseq_cli.generate
        from fairseq import options, tasks
        from fairseq.dataclass.utils import convert_namespace_to_omegaconf
        data = tempfile.mkdtemp()
        with open(os.path.join(data, "dict.txt"), "w") as f:
            f.writelines(f"{i} 1\\n" for i in range(256))
        args = options.parse_args_and_arch(options.get_training_parser(), [
            data, "--user-dir", "seqboat_fairseq", "--task", "language_modeling", "--arch", "seqboat_lm_tiny"])
        cfg = convert_namespace_to_omegaconf(args)
        task = tasks.setup_task(cfg.task)
        model = task.build_model(cfg.model)
        out, _ = model(torch.randint(4, 200, (2, 16)))
        assert out.shape == (2, 16, len(task.target_dictionary)), out.shape
        assert not any(m.startswith("torchaudio") and sys.modules[m] for m in sys.modules)
    """)
    rc, stderr = import_plugin(code)
    assert rc == 0, stderr
