"""syncd checks the taxpayer name a certificate will carry by the printer's own name rules."""

from __future__ import annotations

import pytest

from syncd.registration import RegistrationError, check_taxpayer

TAX_ID = "91350100M000100Y43"


@pytest.mark.parametrize(
    "name",
    ["\u0301Shop", "Shop\u202eevil", "Shop\u2028Total 0.00", "Sh\u200bop", "Sh\x85op", " ", ""],
)
def test_spoofing_names_are_refused_naming_the_field(name: str) -> None:
    with pytest.raises(RegistrationError, match="taxpayer name"):
        check_taxpayer(TAX_ID, name)


def test_ordinary_names_pass() -> None:
    assert check_taxpayer(TAX_ID, " 福州茶叶店 ")["name"] == "福州茶叶店"
    assert check_taxpayer(TAX_ID, "ACME\u3000Trading")["name"] == "ACME\u3000Trading"


def test_a_hostile_tax_id_is_quoted_bounded() -> None:
    with pytest.raises(RegistrationError) as caught:
        check_taxpayer("\x00" * 10_000, "Shop")
    assert len(str(caught.value)) < 300
