"""README's config reference is the one generated from the schema."""

from conftest import REPO
from vlqc.config_reference import BEGIN, END, render


def test_readme_config_reference_matches_the_schema():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start, end = readme.index(BEGIN), readme.index(END) + len(END)
    assert readme[start:end] == render(), "regenerate with: python -m vlqc.config_reference"


def test_readme_gives_the_two_setup_commands():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "make demo" in readme and "make test" in readme
