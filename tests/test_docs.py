"""The documentation: README's config reference, docs/ and the citations of it.

- README's config reference is the one generated from the schema.
- Every `docs/<file>.md` (and `#anchor`) cited in the code, configs, schemas, tests or README exists.
- Every relative link in docs/*.md and README.md resolves, anchors included (GitHub heading slugs).
- The worked examples in docs/ are what the code produces.
- Nothing cites the notes kept outside the repository.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import REPO

from vlqc.config_reference import BEGIN, END, render, spliced
from vlqc.data.desc import build_desc
from vlqc.data.export import parse_export
from vlqc.data.summary import build_legacy_summary, build_summary
from vlqc.errors import VlqcError
from vlqc.inference.answers import parse_verdict

DOCS = REPO / "docs"
# Where code, configs and tests may cite docs (the brief of issue 15), plus the workflow entry.
CITING_DIRS = ("src", "scripts", "rules", "config", "schemas", "tests")
CITING_FILES = ("README.md", "Snakefile")
TEXT_SUFFIXES = {".py", ".smk", ".yaml", ".yml", ".json", ".md", ".toml", ".txt", ".rst"}
CITATION = re.compile(r"docs/([\w.-]+\.md)(?:#([\w-]+))?")
# Citations of the notes that are not in the repository; bare section numbers (§3c) point there too.
OUTSIDE_NOTES = re.compile(r"origin-facts|stage-b-origin|shared/reference|§[0-9]")

_FENCE = re.compile(r"^(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_CODE_SPAN = re.compile(r"`+[^`]*`+")


# --- README config reference ------------------------------------------------------------------


def test_readme_config_reference_matches_the_schema():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start, end = readme.index(BEGIN), readme.index(END) + len(END)
    assert readme[start:end] == render(), "regenerate with: python -m vlqc.config_reference --write"
    assert spliced(readme) == readme, "README.md must hold each marker once"


def test_splicing_replaces_the_marked_block_only():
    assert spliced(f"intro\n{BEGIN}\nstale\n{END}\noutro") == f"intro\n{render()}\noutro"
    for broken in (f"{BEGIN}{END}{END}", f"{END}{BEGIN}", "no markers"):
        with pytest.raises(VlqcError, match="must hold"):
            spliced(broken)


def test_readme_gives_the_two_setup_commands():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "make demo" in readme and "make test" in readme


# --- markdown helpers -------------------------------------------------------------------------


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link syntax and code ticks gone, lowercased, punctuation
    and symbols dropped (letters of any script, digits, `_` and `-` stay), spaces to `-`."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Heading anchors of a markdown file; repeated headings get -1, -2, … as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for line in _prose_lines(path.read_text(encoding="utf-8")):
        match = _HEADING.match(line)
        if match is None:
            continue
        base = slug(match.group(2))
        found.add(f"{base}-{seen[base]}" if base in seen else base)
        seen[base] = seen.get(base, 0) + 1
    return found


def test_slug_follows_github():
    assert slug("Desc key=value form") == "desc-keyvalue-form"
    assert slug("Legacy ×N summary") == "legacy-n-summary"
    assert slug("`dataList` variant") == "datalist-variant"
    assert slug("Post-processing order") == "post-processing-order"
    assert slug("安装点 and [links](x.md)") == "安装点-and-links"


def test_repeated_headings_get_numbered_anchors(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("# A\n## Notes\n```\n# not a heading\n```\n## Notes\n", encoding="utf-8")
    assert anchors(doc) == {"a", "notes", "notes-1"}


def _target_problem(target: Path, anchor: str | None) -> str | None:
    """Why a cited or linked file (and anchor) does not resolve, or None."""
    if not target.exists():
        return f"{target.relative_to(REPO) if target.is_relative_to(REPO) else target} does not exist"
    if anchor and target.suffix == ".md" and anchor not in anchors(target):
        return f"{target.name} has no heading with anchor #{anchor}"
    return None


# --- citations of docs/ in the code base --------------------------------------------------------


def _citing_files() -> list[Path]:
    files = [REPO / name for name in CITING_FILES if (REPO / name).is_file()]
    for folder in CITING_DIRS:
        files += sorted(p for p in (REPO / folder).rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
    return [path for path in files if path != Path(__file__).resolve()]


def _citations() -> list[tuple[str, str, str | None]]:
    """(where, docs file, anchor) of every docs/<file>.md citation."""
    found = []
    for path in _citing_files():
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            for match in CITATION.finditer(line):
                found.append((f"{path.relative_to(REPO)}:{lineno}", match.group(1), match.group(2)))
    return found


def test_every_cited_doc_exists():
    problems = [
        f"{where}: docs/{name}{'#' + anchor if anchor else ''}: {problem}"
        for where, name, anchor in _citations()
        if (problem := _target_problem(DOCS / name, anchor))
    ]
    assert not problems, "\n".join(problems)


def test_citation_pattern_reads_paths_and_anchors():
    line = "see docs/taxonomy.md#desc-keyvalue-form and (docs/stage-a.md), not docs/<file>.md"
    assert [m.groups() for m in CITATION.finditer(line)] == [
        ("taxonomy.md", "desc-keyvalue-form"),
        ("stage-a.md", None),
    ]


def test_nothing_cites_notes_outside_the_repository():
    hits = []
    for path in _citing_files():
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if OUTSIDE_NOTES.search(line):
                hits.append(f"{path.relative_to(REPO)}:{lineno}: {line.strip()[:100]}")
    assert not hits, "cite docs/<file>.md instead (table in docs/README.md):\n" + "\n".join(hits)


# --- links inside the docs ----------------------------------------------------------------------


def _doc_files() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def _links(path: Path) -> list[str]:
    text = "\n".join(_CODE_SPAN.sub("", line) for line in _prose_lines(path.read_text(encoding="utf-8")))
    return [target for target in _LINK.findall(text) if not re.match(r"^[a-z]+:", target)]


@pytest.mark.parametrize("doc", [*_doc_files(), REPO / "README.md"], ids=lambda p: str(p.relative_to(REPO)))
def test_links_resolve(doc):
    problems = []
    for link in dict.fromkeys(_links(doc)):
        file_part, _, anchor = link.partition("#")
        target = (doc.parent / file_part).resolve() if file_part else doc
        if problem := _target_problem(target, anchor or None):
            problems.append(f"{doc.relative_to(REPO)}: ({link}): {problem}")
    assert not problems, "\n".join(problems)


def test_docs_index_lists_every_doc():
    index = DOCS / "README.md"
    linked = {link.partition("#")[0] for link in _links(index)}
    missing = [p.name for p in _doc_files() if p != index and p.name not in linked]
    assert not missing, f"docs/README.md does not list {missing}"


def test_readme_points_to_the_docs():
    assert "docs/README.md" in _links(REPO / "README.md")


# --- worked examples ----------------------------------------------------------------------------


def _checks(doc: str) -> list[tuple[str, list[str], str]]:
    """(marker args, fenced blocks, text) after each `<!-- check: … -->` marker of a doc: the blocks
    are the next two fenced blocks, the text runs to the next heading."""
    text = (DOCS / doc).read_text(encoding="utf-8")
    found = []
    for match in re.finditer(r"<!-- check: ([^>]*?) -->", text):
        rest = text[match.end() :]
        section = re.split(r"\n#{1,6} ", rest, maxsplit=1)[0]
        blocks = re.findall(r"```[a-z]*\n(.*?)\n```", rest, flags=re.DOTALL)[:2]
        found.append((match.group(1), blocks, section))
    assert found, f"docs/{doc} has no worked example to check"
    return found


def test_summary_examples_match_the_builders():
    for args, (descs, expected), _ in _checks("summary-format.md"):
        kind, domain = args.split()
        build = {"summary": build_summary, "legacy-summary": build_legacy_summary}[kind]
        assert build(descs.splitlines(), domain) == expected, f"summary-format.md example ({args}) is stale"


def test_export_example_matches_the_converter():
    ((_, (export, *_), section),) = _checks("export-format.md")
    parsed = parse_export(json.loads(export))
    assert not parsed.dropped
    rows = [line for line in section.splitlines() if line.startswith("|") and "类别=" in line]
    shown = [
        (re.search(r"`(bbox_2d|poly|line)`", row).group(1), re.search(r"`(类别=[^`]+)`", row).group(1)) for row in rows
    ]
    built = [(obj.geometry, build_desc(obj)) for _, obj in parsed.objects]
    assert shown == built, "export-format.md worked example is stale"


def test_verdict_examples_match_the_parser():
    ((_, _, section),) = _checks("verdict.md")
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert rows
    for row in rows:
        answer, result = (cell.strip() for cell in row.strip("|").split("|"))
        verdict_line, reason_line = re.findall(r"`([^`]*)`", answer)
        parsed = parse_verdict(f"{verdict_line}\n{reason_line}")
        assert (parsed.verdict or f"`{parsed.error}`") == result, f"verdict.md: {row}"
