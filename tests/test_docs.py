"""README's config reference is the one generated from the schema."""

import pytest
from conftest import REPO

from vlqc.config_reference import BEGIN, END, render, spliced
from vlqc.errors import VlqcError


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
