from __future__ import annotations

from pathlib import Path

from services.cli.settings_table import (
    END,
    SETTINGS_CLASSES,
    START,
    TABLE_FILE,
    markdown_table,
    settings_classes,
    with_table,
)

TABLE = Path(__file__).resolve().parents[2] / TABLE_FILE


def test_the_docs_table_is_the_code_s_table() -> None:
    text = TABLE.read_text(encoding="utf-8")
    assert with_table(text) == text, (
        f"{TABLE_FILE}'s settings table is stale: run `regime3 settings --update {TABLE_FILE}`"
    )


def test_every_listed_settings_class_is_in_the_table() -> None:
    # A class that fails to import is an error here, never a row left out.
    assert len(settings_classes()) == len(SETTINGS_CLASSES)


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
