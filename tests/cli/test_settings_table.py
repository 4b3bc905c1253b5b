from __future__ import annotations

from pathlib import Path

from services.cli.settings_table import END, START, markdown_table, settings_classes, with_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_table_is_the_code_s_table() -> None:
    text = README.read_text(encoding="utf-8")
    assert with_table(text) == text, (
        "README's settings table is stale: run `regime3 settings --update-readme README.md`"
    )


def test_every_setting_has_a_description() -> None:
    for cls in settings_classes():
        for name, info in cls.model_fields.items():
            assert info.description, f"{cls.__name__}.{name} has no description"


def test_every_setting_appears_once() -> None:
    table = markdown_table()
    rows = [line for line in table.splitlines()[2:]]
    names = [row.split("`")[1] for row in rows]
    assert len(names) == len(set(names))
    assert "R3_REDIS_URL" in names and START not in table and END not in table
