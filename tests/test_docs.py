"""The names the documentation cites exist: test files and test functions, repository paths,
Python modules and their attributes, and the classes of the package.

Checked documents: README.md, docs/*.md, bench/README.md. Only `backticked` spans are read, and
only spans that unambiguously name something of this repository are checked:

* ``tests/test_x.py``, ``test_x.py``, ``test_x.py::test_fn`` and a following ``::test_fn`` (same file);
* paths whose first component is a top-level directory of the repository or a subpackage of
  ``seqboat_fairseq`` (``modules/ema.py``), with ``{a,b}`` alternatives and ``*`` globs expanded;
* dotted Python names whose head is ``seqboat_fairseq``, a module of the package (``ema.chunked_ema_conv``)
  or a class defined in it (``SeqBoatLayer.route``);
* CamelCase names that look like the package's own classes (``SeqBoat*``, ``*Layer``, ...), which
  must be defined somewhere in the repository.
"""

import ast
import glob
import importlib
import itertools
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "seqboat_fairseq")
TOP_DIRS = ("seqboat_fairseq", "tests", "bench", "docs", "examples", "data_prep", "scripts")
SUBPACKAGES = ("modules", "models", "criterions", "tasks", "optim", "encoders", "analysis")
PATH_SUFFIXES = (".py", ".sh", ".md", ".txt", ".json", ".ini", ".cfg", ".yaml", ".jsonl", ".png")


def documents():
    docs = [os.path.join(REPO, "README.md"), os.path.join(REPO, "bench", "README.md")]
    docs += sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))
    return [d for d in docs if os.path.exists(d)]


def spans(path):
    """Backticked spans of a markdown file, fenced code blocks excluded, in document order."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.findall(r"`([^`\n]+)`", text)


def expand(path):
    """``a/{b,c}.py`` -> ``a/b.py``, ``a/c.py``."""
    parts = re.split(r"\{([^}]*)\}", path)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def path_exists(path):
    path = path.rstrip("/")
    candidates = [os.path.join(REPO, path)]
    if path.split("/")[0] in SUBPACKAGES:
        candidates.append(os.path.join(PACKAGE, path))
    return any(glob.glob(c) for c in candidates)


def functions_of(test_file):
    with open(os.path.join(REPO, "tests", test_file), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    return {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.ClassDef))}


def defined_names():
    """Every class, function and module-level assignment defined in the repository's Python files."""
    names = set()
    for path in glob.glob(os.path.join(REPO, "**", "*.py"), recursive=True):
        if f"{os.sep}." in os.path.relpath(path, REPO) or "egg-info" in path:
            continue
        with open(path, encoding="utf-8") as f:
            try:
                tree = ast.parse(f.read())
            except SyntaxError:
                continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def package_modules():
    """Module stem -> dotted module name, for every module of the package."""
    out = {}
    for path in glob.glob(os.path.join(PACKAGE, "**", "*.py"), recursive=True):
        rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
        stem = rel.split(".")[-1]
        if stem != "__init__":
            out.setdefault(stem, rel)
        else:
            out.setdefault(rel.split(".")[-2], rel[: -len(".__init__")])
    return out


def package_classes():
    """Class name -> dotted module name, for every class defined in the package."""
    out = {}
    for path in glob.glob(os.path.join(PACKAGE, "**", "*.py"), recursive=True):
        module = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".").replace(".__init__", "")
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                out.setdefault(node.name, module)
    return out


OWN_CLASS = re.compile(r"^(SeqBoat\w*|Spade\w*|\w*(Layer|Unit|EMA|Configurator|Coefficients|Activation|"
                       r"Decoder|Config|Dataset|Criterion|Task))$")
# names that match OWN_CLASS but are defined neither here nor in fairseq / torch (external_class)
FOREIGN_CLASSES = {"SeqBoatUnit"}  # upstream's layer class, named where the docs compare with upstream


def cited_names():
    """(document, kind, name, test file or None) for every checked citation."""
    out = []
    for doc in documents():
        last_test_file = None
        for span in spans(doc):
            span = span.strip()
            m = re.fullmatch(r"(?:tests/)?(test_\w+\.py)(?:::(\w+)(?:\[[^\]]*\])?)?", span)
            if m:
                last_test_file = m.group(1)
                out.append((doc, "test file", m.group(1), None))
                if m.group(2):
                    out.append((doc, "test function", m.group(2), m.group(1)))
                continue
            m = re.fullmatch(r"::(\w+)(?:\[[^\]]*\])?", span)
            if m and last_test_file:
                out.append((doc, "test function", m.group(1), last_test_file))
                continue
            m = re.fullmatch(r"(tests/)?(\w[\w./{},*-]*)(::\w+)?", span)
            if m and "/" in span and span.split("/")[0] in TOP_DIRS + SUBPACKAGES and "::" not in span:
                last = span.rstrip("/").split("/")[-1]
                if span.endswith("/") or "." not in last or last.endswith(PATH_SUFFIXES) or "*" in last:
                    for p in expand(span):
                        out.append((doc, "path", p, None))
                continue
            if re.fullmatch(r"\w+\.(py|sh)", span):
                out.append((doc, "file name", span, None))
                continue
            if re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", span):
                out.append((doc, "dotted", span, None))
                continue
            if re.fullmatch(r"[A-Z][a-z]\w*[A-Z]\w*", span) and OWN_CLASS.match(span):
                out.append((doc, "class", span, None))
    return out


CITED = cited_names()


def test_the_checker_finds_citations_of_every_kind():
    kinds = {kind for _, kind, _, _ in CITED}
    assert {"test file", "test function", "path", "dotted", "class", "file name"} <= kinds, kinds
    assert len(CITED) > 200, len(CITED)


def test_cited_test_files_and_functions_exist():
    missing = []
    functions = {}
    for doc, kind, name, test_file in CITED:
        rel = os.path.relpath(doc, REPO)
        if kind == "test file" and not os.path.exists(os.path.join(REPO, "tests", name)):
            missing.append(f"{rel}: tests/{name}")
        elif kind == "test function" and os.path.exists(os.path.join(REPO, "tests", test_file)):
            if test_file not in functions:
                functions[test_file] = functions_of(test_file)
            if name not in functions[test_file]:
                missing.append(f"{rel}: {test_file}::{name}")
    assert not missing, "documents cite tests that do not exist:\n" + "\n".join(sorted(set(missing)))


def test_cited_paths_exist():
    missing = sorted({f"{os.path.relpath(doc, REPO)}: {name}" for doc, kind, name, _ in CITED
                      if kind == "path" and not path_exists(name)})
    assert not missing, "documents cite paths that do not exist:\n" + "\n".join(missing)


def resolve_dotted(name, modules, classes):
    """True / False when ``name`` is checked, None when it is not a name of this package."""
    head, *rest = name.split(".")
    if head == "seqboat_fairseq":
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            try:
                for attr in parts[cut:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                return False
            return True
        return False
    if head in classes:
        obj = getattr(importlib.import_module(classes[head]), head)
    elif head in modules and not re.fullmatch(r"(torch|np|F|nn|os|sys)", head):
        obj = importlib.import_module(modules[head])
    else:
        return None
    for attr in rest:
        if hasattr(obj, attr):
            obj = getattr(obj, attr)
        elif isinstance(obj, type) and instance_attribute(obj, attr):
            return True
        else:
            return False
    return True


def instance_attribute(cls, attr):
    """Whether some method of ``cls`` (or of a base defined in this repository) assigns ``self.<attr>``."""
    import inspect

    for klass in cls.__mro__:
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        if re.search(rf"self\.{attr}\b[^=\n]*=(?!=)", source):
            return True
    return False


def external_class(name):
    """Whether ``name`` is a class of fairseq's or torch's public modules (the docs compare with them)."""
    for module in ("fairseq.data", "fairseq.models", "fairseq.criterions", "fairseq.tasks", "fairseq.dataclass",
                   "fairseq.sequence_generator", "torch.nn", "torch"):
        try:
            if isinstance(getattr(importlib.import_module(module), name, None), type):
                return True
        except ImportError:
            continue
    return False


def test_cited_python_names_exist():
    pytest.importorskip("fairseq")
    modules, classes = package_modules(), package_classes()
    defined = defined_names()
    missing = []
    for doc, kind, name, _ in CITED:
        rel = os.path.relpath(doc, REPO)
        if kind == "dotted" and resolve_dotted(name, modules, classes) is False:
            missing.append(f"{rel}: {name}")
        elif kind == "class" and name not in defined and name not in FOREIGN_CLASSES and not external_class(name):
            missing.append(f"{rel}: {name}")
        elif kind == "file name" and not glob.glob(os.path.join(REPO, "**", name), recursive=True):
            missing.append(f"{rel}: {name}")
    assert not missing, "documents cite Python names that do not exist:\n" + "\n".join(sorted(set(missing)))


def test_design_contents_list_every_section():
    with open(os.path.join(REPO, "docs", "design.md"), encoding="utf-8") as f:
        text = f.read()
    contents = next(p for p in text.split("\n\n") if p.startswith("Contents:"))
    sections = re.findall(r"^## (.+)$", text, flags=re.M)
    anchors = set(re.findall(r"\]\(#([\w-]+)\)", contents))
    slug = lambda title: re.sub(r"[^\w -]", "", title.lower()).replace(" ", "-")  # noqa: E731
    missing = [s for s in sections if slug(s) not in anchors]
    assert not missing, f"docs/design.md's contents omit: {missing}"
    known = {slug(s) for s in re.findall(r"^#+ (.+)$", text, flags=re.M)}
    dangling = [a for a in re.findall(r"\]\(#([\w-]+)\)", text) if a not in known]
    assert not dangling, f"docs/design.md links to missing sections: {dangling}"


def test_relative_links_point_at_files_and_sections():
    missing = []
    for doc in documents():
        with open(doc, encoding="utf-8") as f:
            text = re.sub(r"^```.*?^```", "", f.read(), flags=re.S | re.M)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            full = os.path.normpath(os.path.join(os.path.dirname(doc), path)) if path else doc
            if not os.path.exists(full):
                missing.append(f"{os.path.relpath(doc, REPO)}: {target}")
            elif anchor and full.endswith(".md"):
                with open(full, encoding="utf-8") as f:
                    titles = re.findall(r"^#+ (.+)$", f.read(), flags=re.M)
                slugs = {re.sub(r"[^\w -]", "", t.lower()).replace(" ", "-") for t in titles}
                if anchor not in slugs:
                    missing.append(f"{os.path.relpath(doc, REPO)}: {target}")
    assert not missing, "broken links:\n" + "\n".join(missing)
