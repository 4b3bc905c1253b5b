"""The Venn-region checker agrees with the traditional lists of valid syllogisms."""

from __future__ import annotations

import pytest

from codec.domains.venn import ALL_FORMS, Form, broken_rule, is_valid, models, valid_forms

# The reference: the 15 forms valid without existential import (Boolean reading) ...
UNCONDITIONAL = {
    "Barbara": "AAA-1", "Celarent": "EAE-1", "Darii": "AII-1", "Ferio": "EIO-1",
    "Cesare": "EAE-2", "Camestres": "AEE-2", "Festino": "EIO-2", "Baroco": "AOO-2",
    "Disamis": "IAI-3", "Datisi": "AII-3", "Bocardo": "OAO-3", "Ferison": "EIO-3",
    "Calemes": "AEE-4", "Dimatis": "IAI-4", "Fresison": "EIO-4",
}  # fmt: skip
# ... and the 9 more that are valid when every term has members (existential import).
WITH_IMPORT = {
    "Barbari": "AAI-1", "Celaront": "EAO-1", "Cesaro": "EAO-2", "Camestros": "AEO-2",
    "Darapti": "AAI-3", "Felapton": "EAO-3", "Bamalip": "AAI-4", "Calemos": "AEO-4",
    "Fesapo": "EAO-4",
}  # fmt: skip


def test_256_forms_and_128_models() -> None:
    assert len(ALL_FORMS) == 256
    assert len(models(False)) == 128
    assert len(models(True)) < 128


def test_the_15_unconditionally_valid_forms() -> None:
    assert {f.name for f in valid_forms(existential_import=False)} == set(UNCONDITIONAL.values())


def test_the_24_valid_forms_with_existential_import() -> None:
    expected = set(UNCONDITIONAL.values()) | set(WITH_IMPORT.values())
    assert len(expected) == 24
    assert {f.name for f in valid_forms(existential_import=True)} == expected


@pytest.mark.parametrize("existential_import", [False, True])
def test_traditional_rules_agree_with_the_semantics(existential_import: bool) -> None:
    for form in ALL_FORMS:
        assert (broken_rule(form, existential_import) is None) == is_valid(
            form, existential_import
        ), form.name


def test_named_examples() -> None:
    assert broken_rule(Form("aaa", 2)) == "undistributed-middle"
    assert broken_rule(Form("aai", 1)) == "existential-fallacy"
    assert broken_rule(Form("eee", 1)) == "exclusive-premises"
