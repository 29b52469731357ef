"""The guide shows the tested code: its snippet markers and includes hold.

The four ``densenet.py`` files mark each part with ``# --8<-- [start:NAME]`` /
``# --8<-- [end:NAME]`` comment lines (pymdownx.snippets sections) and the guide's
pages include them with ``--8<-- "path:NAME"``. Checked here without a framework:
every name is marked exactly once, start before end, sections nest; the four files
mark the same names, and each name covers the same part; every include in ``docs/``
names a file that exists and a section it has. ``mkdocs build --strict`` (the docs
env) fails on a broken include too, but only after generating everything; this
fails in a second.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from densenet_multi.guide.conventions import PARTS

ROOT = Path(__file__).resolve().parents[2]
BACKENDS = ("torch", "flax", "keras", "gluon")

#: the marked sections, and what the first code line of each must be (the same part in every file)
SECTIONS = {
    "helpers": None,  # the module-level helpers the parts call (differs per framework)
    "norm_conv": None,  # the BN and conv constructors: the framework calls with eps, momentum, padding
    "conv_block": r"class ConvBlock\(",
    "dense_layer": r"class DenseLayer\(",
    "dense_block": r"class DenseBlock\(",
    "transition": r"class Transition\(ConvBlock\)",
    "network": r"(@keras\.saving\.register_keras_serializable\(.*\)|class DenseNet\()",
    "stem": None,
    "head": None,
}
#: what a section must contain somewhere (the framework differs, the part does not)
CONTAINS = {
    "norm_conv": (r"def _(norm|batch_norm)\(", r"def _conv\("),
    "network": (r"class DenseNet\(", r"def forward_stages\("),
    "stem": (r"conv0", r"norm0", r"relu0", r"pool0"),
    "head": (r"norm5", r"classifier", r"def forward_features\(", r"def forward_head\("),
}
#: sections that must lie inside another
INSIDE = {"norm_conv": "helpers", "stem": "network", "head": "network"}

# pymdownx.snippets' section marker and include line (an escaped ';--8<--' is neither)
MARKER = re.compile(r"^(?P<pre>.*?)(?<!;)-+8<-+[ \t]+\[[ \t]*(?P<type>start|end)[ \t]*:[ \t]*"
                    r"(?P<name>[a-zA-Z][-_0-9a-zA-Z]*)[ \t]*\]")
INCLUDE = re.compile(r"^\s*(?<!;)-+8<-+[ \t]+(?P<q>[\"'])(?P<target>[^\"']+)(?P=q)")
SECTION_NAME = re.compile(r"^(?P<path>.+?):(?P<name>[a-zA-Z][-_0-9a-zA-Z]*)$")


def markers(text: str) -> list[tuple[int, str, str, str]]:
    """(line number, start|end, name, text before the marker) for every marker line."""
    out = []
    for i, line in enumerate(text.splitlines(), start=1):
        m = MARKER.match(line)
        if m:
            out.append((i, m["type"], m["name"], m["pre"]))
    return out


def section(text: str, name: str) -> list[str]:
    """The lines of section ``name`` without marker lines (what the snippet shows)."""
    lines, inside = [], False
    for line in text.splitlines():
        m = MARKER.match(line)
        if m:
            if m["name"] == name:
                inside = m["type"] == "start"
            continue
        if inside:
            lines.append(line)
    return lines


def marker_problems(text: str) -> list[str]:
    """Every way the markers of one densenet.py are wrong; empty when they hold."""
    problems = []
    found = markers(text)
    spans: dict[str, tuple[int, int]] = {}
    for name in sorted({n for _, _, n, _ in found} | set(SECTIONS)):
        starts = [i for i, t, n, _ in found if n == name and t == "start"]
        ends = [i for i, t, n, _ in found if n == name and t == "end"]
        if name not in SECTIONS:
            problems.append(f"unknown section {name!r} (known: {', '.join(SECTIONS)})")
        if len(starts) != 1 or len(ends) != 1:
            problems.append(f"{name}: {len(starts)} start and {len(ends)} end markers, expected one of each")
            continue
        if starts[0] > ends[0]:
            problems.append(f"{name}: ends (line {ends[0]}) before it starts (line {starts[0]})")
            continue
        spans[name] = (starts[0], ends[0])
    for i, _, name, pre in found:
        if pre.strip() != "#":
            problems.append(f"line {i}: the {name} marker is not a comment line of its own")
    names = sorted(spans)
    for a in names:
        for b in names:
            (sa, ea), (sb, eb) = spans[a], spans[b]
            if sa < sb < ea < eb:
                problems.append(f"sections {a} and {b} overlap without nesting")
    for inner, outer in INSIDE.items():
        if inner in spans and outer in spans:
            (si, ei), (so, eo) = spans[inner], spans[outer]
            if not so < si < ei < eo:
                problems.append(f"{inner} is not inside {outer}")
    for name, first in SECTIONS.items():
        if name not in spans:
            continue
        code = [line.strip() for line in section(text, name)
                if line.strip() and not line.strip().startswith("#")]
        if not code:
            problems.append(f"{name}: the section is empty")
            continue
        if first and not re.match(first, code[0]):
            problems.append(f"{name}: starts with {code[0]!r}, expected {first!r}")
        body = "\n".join(code)
        for pattern in CONTAINS.get(name, ()):
            if not re.search(pattern, body):
                problems.append(f"{name}: no {pattern!r} in the section")
    return problems


def include_problems(page: str, text: str, root: Path = ROOT) -> list[str]:
    """Every include line of a markdown page that points at no file or no section."""
    problems = []
    for i, line in enumerate(text.splitlines(), start=1):
        m = INCLUDE.match(line)
        if not m:
            continue
        target = m["target"].strip()
        sm = SECTION_NAME.match(target)
        path, name = (sm["path"], sm["name"]) if sm else (target, None)
        where = f"{page}:{i}: {target!r}"
        if path.startswith("docs/generated/"):
            # written by `python -m densenet_multi.guide.build` before mkdocs runs; the
            # conventions tables are known by name, the other steps' files are theirs
            part = re.fullmatch(r"docs/generated/conventions/(?P<part>\w+)\.md", path)
            if path.startswith("docs/generated/conventions/") and (not part or part["part"] not in PARTS):
                problems.append(f"{where}: the conventions step writes no such table "
                                f"(parts: {', '.join(PARTS)})")
            continue
        file = root / path
        if not file.is_file():
            problems.append(f"{where}: no file {path}")
            continue
        if name is None:
            continue
        found = [(t, n) for _, t, n, _ in markers(file.read_text(encoding="utf-8")) if n == name]
        if ("start", name) not in found or ("end", name) not in found:
            problems.append(f"{where}: {path} has no section {name!r}")
    return problems


def _source(backend: str) -> str:
    return (ROOT / "densenet_multi" / backend / "densenet.py").read_text(encoding="utf-8")


def _pages() -> list[Path]:
    return sorted((ROOT / "docs").rglob("*.md"))


# ---------------------------------------------------------------------- the checks
@pytest.mark.parametrize("backend", BACKENDS)
def test_markers_hold(backend):
    problems = marker_problems(_source(backend))
    assert not problems, f"{backend}/densenet.py:\n  " + "\n  ".join(problems)


def test_the_four_files_mark_the_same_sections():
    names = {b: sorted({n for _, _, n, _ in markers(_source(b))}) for b in BACKENDS}
    assert all(v == sorted(SECTIONS) for v in names.values()), names


def test_every_include_points_at_a_file_and_section():
    problems = [p for page in _pages()
                for p in include_problems(str(page.relative_to(ROOT)), page.read_text(encoding="utf-8"))]
    assert not problems, "\n".join(problems)


def test_the_part_pages_include_every_backend():
    """Each part page shows the four backends' code for its part, from the source."""
    pages = {"conv-block": ["conv_block"], "dense-layer": ["dense_layer"],
             "dense-block": ["dense_block"], "transition": ["transition"],
             "stem-and-head": ["stem", "head"], "network": ["network"]}
    for page, names in pages.items():
        path = ROOT / "docs" / "guide" / f"{page}.md"
        if not path.is_file():
            pytest.fail(f"missing part page {path.relative_to(ROOT)}")
        text = path.read_text(encoding="utf-8")
        for name in names:
            for b in BACKENDS:
                assert f'"densenet_multi/{b}/densenet.py:{name}"' in text, (page, b, name)


# ---------------------------------------------------------------------- the checks can fail
def test_the_marker_check_fails_on_broken_copies():
    text = _source("torch")
    assert not marker_problems(text)
    no_end = text.replace("# --8<-- [end:transition]\n", "", 1)
    assert any("transition: 1 start and 0 end" in p for p in marker_problems(no_end))
    twice = text.replace("# --8<-- [start:conv_block]\n", "# --8<-- [start:conv_block]\n" * 2, 1)
    assert any("conv_block: 2 start" in p for p in marker_problems(twice))
    # a start marker moved below its end
    swapped = (text.replace("# --8<-- [start:dense_block]", "# --8<-- [XX]", 1)
               .replace("# --8<-- [end:dense_block]", "# --8<-- [start:dense_block]", 1)
               .replace("# --8<-- [XX]", "# --8<-- [end:dense_block]", 1))
    assert any("dense_block: ends" in p for p in marker_problems(swapped))
    # the section named after one part wrapped around another
    wrong = (text.replace("# --8<-- [start:conv_block]", "# --8<-- [start:dense_layer_x]", 1))
    assert any("unknown section 'dense_layer_x'" in p for p in marker_problems(wrong))
    moved = text.replace("    # --8<-- [end:head]\n", "", 1).replace(
        "# --8<-- [end:network]\n", "# --8<-- [end:network]\n# --8<-- [end:head]\n", 1)
    assert any("head is not inside network" in p for p in marker_problems(moved))
    inline = text.replace("# --8<-- [start:stem]", "x = 1  # --8<-- [start:stem]", 1)
    assert any("not a comment line of its own" in p for p in marker_problems(inline))


def test_the_include_check_fails_on_broken_includes(tmp_path):
    good = '    --8<-- "densenet_multi/torch/densenet.py:conv_block"\n'
    assert not include_problems("page.md", good)
    assert include_problems("page.md", good.replace("conv_block", "conv_blok"))[0].endswith(
        "has no section 'conv_blok'")
    assert "no file" in include_problems("page.md", good.replace("torch/", "torchx/"))[0]
    assert "no such table" in include_problems(
        "page.md", '--8<-- "docs/generated/conventions/conv_blocks.md"\n')[0]
    assert not include_problems("page.md", '--8<-- "docs/generated/pitfalls.md"\n')
    assert not include_problems("page.md", ';--8<-- "nowhere.py:x"\n')  # escaped: not an include


# ---------------------------------------------------------------------- the tables under the code
def _fake_facts(skip: tuple[str, str] | None = None) -> dict:
    from densenet_multi.guide.conventions import ROWS

    parts = {part: {key: {"text": f"{part}.{key} | x"} for _, key in rows if (part, key) != skip}
             for part, rows in ROWS.items()}
    return {b: {"version": "0", "parts": parts} for b in BACKENDS}


def test_every_table_row_has_a_canonical_value_and_renders():
    from densenet_multi.guide.conventions import ROWS, canonical_facts, render

    canonical = canonical_facts()
    for part, rows in ROWS.items():
        assert set(PARTS) == set(ROWS)
        assert not [k for _, k in rows if k not in canonical[part]], part
        table = render(part, _fake_facts(), canonical).splitlines()
        assert table[0] == "| Property | Canonical (spec) | PyTorch | Flax NNX | Keras 3 | MXNet Gluon |"
        assert len([line for line in table if line.startswith("| ")]) == len(rows) + 1
        assert f"{part}.{rows[0][1]} \\| x" in table[2]  # a '|' in a fact cannot split the cell


def test_a_missing_fact_fails_the_table():
    from densenet_multi.guide.conventions import render

    with pytest.raises(KeyError, match="no conv_block.bn_momentum"):
        render("conv_block", _fake_facts(skip=("conv_block", "bn_momentum")))
    with pytest.raises(ValueError, match="unknown part"):
        render("stem", _fake_facts())
