"""Every citation of docs/design.md, methods.md, deployment.md and reference-benchmark.md resolves.

A citation is `docs/NAME.md` followed by section references, e.g. `docs/methods.md 1.2(3)-(4)`,
`docs/design.md sections 3-4`, `docs/deployment.md section 0, point 3`,
`docs/reference-benchmark.md, Q2`. Each reference must name a heading with that number in that
file (`## 1. ...`, `### 1.2 ...`, `#### 6.13.3 ...`, `## Q2. ...`); an item `(k)` must appear as
`(k)` inside that section, a `point N` as a numbered list item `N.` inside it.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("design", "methods", "deployment", "reference-benchmark")

_ITEM = r"\((?:[ivx]+|\d+)\)"
_REF = rf"(?:Q\d+|\d+(?:\.\d+)*)(?:\s?{_ITEM}(?:-{_ITEM})?)?(?:,?\s+points?\s+\d+)?"
# Between two references: a comma, semicolon, "and" or a range dash, optionally after one word
# ("2.1 FZ-RMQ, 2.4") or before one capitalised word and a comma/semicolon ("2.1, INFERRED; 4.2(3)").
_SEP = r"(?:[ \t]+[A-Za-z][\w-]*)?[ \t]*(?:,|;|and|-)[ \t]*(?:[A-Z][\w-]*[ \t]*[,;][ \t]*)?"
CITATION = re.compile(
    rf"docs/(?P<doc>{'|'.join(DOCS)})\.md(?:'s)?`?"
    rf"(?:,?\s*\(?[ \t]*(?:sections?[ \t]+)?(?P<refs>{_REF}(?:{_SEP}{_REF})*))?"
)
HEADING = re.compile(r"^(#{1,6})[ \t]+(Q\d+|\d+(?:\.\d+)*)\.?(?=[ \t])", re.M)


@dataclass(frozen=True)
class Ref:
    section: str
    items: tuple[str, ...] = ()
    point: str | None = None


def parse_refs(text: str) -> list[Ref]:
    """Split the references of one citation: '1.2(3)-(4), 6.8' -> [Ref(1.2, (3, 4)), Ref(6.8)]."""
    refs = []
    for m in re.finditer(_REF, text):
        token = m.group(0)
        number = re.match(r"Q\d+|\d+(?:\.\d+)*", token).group(0)
        items = tuple(re.findall(r"\(([ivx]+|\d+)\)", token))
        point = re.search(r"points?\s+(\d+)", token)
        refs.append(Ref(number, items, point.group(1) if point else None))
    return refs


def sections(markdown: str) -> dict[str, str]:
    """Heading number -> the section's text (up to the next heading of the same or a higher level)."""
    heads = list(HEADING.finditer(markdown))
    out = {}
    for i, h in enumerate(heads):
        level = len(h.group(1))
        end = next((n.start() for n in heads[i + 1 :] if len(n.group(1)) <= level), len(markdown))
        out[h.group(2)] = markdown[h.end() : end]
    return out


def problems(citing_text: str, where: str, docs: dict[str, dict[str, str]]) -> list[str]:
    """One message per citation in `citing_text` that does not resolve in `docs` (name -> sections)."""
    found = []
    for m in CITATION.finditer(citing_text):
        line = citing_text.count("\n", 0, m.start()) + 1
        here = f"{where}:{line}" if "\n" in citing_text else where
        doc = m.group("doc")
        if doc not in docs:
            found.append(f"{here}: docs/{doc}.md does not exist")
            continue
        for ref in parse_refs(m.group("refs") or ""):
            body = docs[doc].get(ref.section)
            if body is None:
                found.append(f"{here}: docs/{doc}.md has no section {ref.section}")
                continue
            for item in ref.items:
                if f"({item})" not in body:
                    found.append(f"{here}: docs/{doc}.md section {ref.section} has no item ({item})")
            if ref.point and not re.search(rf"^\s*{ref.point}\.\s", body, re.M):
                found.append(f"{here}: docs/{doc}.md section {ref.section} has no point {ref.point}")
    return found


def _repo_docs() -> dict[str, dict[str, str]]:
    return {d: sections(p.read_text()) for d in DOCS if (p := ROOT / "docs" / f"{d}.md").is_file()}


def _tracked_text_files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: cannot list the tracked files")
    paths = [ROOT / p for p in out.split("\0") if p and p != "tests/test_docs.py"]  # its examples dangle
    # Untracked new files are not listed; the docs themselves are read explicitly.
    return [p for p in paths if p.is_file() and p.suffix not in {".png", ".safetensors", ".npz", ".onnx"}]


def test_every_citation_resolves():
    docs = _repo_docs()
    assert set(docs) == set(DOCS), f"missing docs: {sorted(set(DOCS) - set(docs))}"
    found, cited = [], 0
    for path in _tracked_text_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        cited += len(CITATION.findall(text))
        found += problems(text, str(path.relative_to(ROOT)), docs)
    assert cited > 100, f"only {cited} citations found: the scan is broken"
    assert not found, "dangling citations:\n" + "\n".join(found)


def test_parser_reads_the_citation_forms():
    text = (
        "a (docs/methods.md 1.2(3)-(4)) b docs/design.md sections 3-4, c docs/methods.md 2.1 FZ-RMQ, 2.4). "
        "d docs/methods.md 2.1, INFERRED; 4.2(3)). e docs/deployment.md section 0, point 3, so "
        "f docs/reference-benchmark.md, Q2 recipe g docs/methods.md 1.6 (i)-(vii), "
        "h docs/methods.md 3.2 Eq. 7-8"
    )
    got = [parse_refs(m.group("refs") or "") for m in CITATION.finditer(text)]
    assert got == [
        [Ref("1.2", ("3", "4"))],
        [Ref("3"), Ref("4")],
        [Ref("2.1"), Ref("2.4")],
        [Ref("2.1"), Ref("4.2", ("3",))],
        [Ref("0", (), "3")],
        [Ref("Q2")],
        [Ref("1.6", ("i", "vii"))],
        [Ref("3.2")],
    ]


def test_a_dangling_citation_fails():
    docs = {
        "methods": sections("# M\n\n## 1. A\n\n### 1.2 B\n\n**(3) x.** y\n\n## 6. C\n"),
        "deployment": sections("# D\n\n## 0. T\n\n1. one\n2. two\n"),
    }
    assert problems("see docs/methods.md 1.2(3) and docs/deployment.md section 0, point 2", "f", docs) == []
    assert problems("see docs/methods.md 9.9", "f", docs) == ["f: docs/methods.md has no section 9.9"]
    assert problems("see docs/methods.md 1.2(4)", "f", docs) == [
        "f: docs/methods.md section 1.2 has no item (4)"
    ]
    assert problems("docs/deployment.md section 0 point 7", "f", docs) == [
        "f: docs/deployment.md section 0 has no point 7"
    ]
    assert problems("docs/design.md section 1", "f", docs) == ["f: docs/design.md does not exist"]
    assert problems("docs/methods.md 1.2, 6.13", "f", docs) == ["f: docs/methods.md has no section 6.13"]
