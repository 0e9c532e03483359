"""Agency codes (QCVN 102 shape and hierarchy) and the directory."""

from __future__ import annotations

import pytest

from exchange.envelope.codes import check_agency_code, level, parent_code
from exchange.errors import ConfigError, InvalidAgencyCodeError, UnknownAgencyError
from exchange.routing.directory import Directory


@pytest.mark.parametrize("code", ["000.00.00.G22", "000.00.00.H41", "000.00.20.H13", "001.02.03.H29"])
def test_valid_codes_are_accepted(code: str) -> None:
    assert check_agency_code(code) == code


@pytest.mark.parametrize(
    "code",
    [
        "",
        "G22",
        "000.00.00.g22",
        "000.00.00.22G",
        "0000.00.00.G22",
        "000.00.00.G2",
        "000-00-00-G22",
        "000.00.00.G22 ",
        "000.00.00.000",
    ],
)
def test_malformed_codes_are_refused_with_a_hint(code: str) -> None:
    with pytest.raises(InvalidAgencyCodeError, match=r"NNN\.NN\.NN\.XNN|empty level-1"):
        check_agency_code(code)


def test_parent_zeroes_the_leftmost_non_zero_group() -> None:
    assert parent_code("001.02.03.H29") == "000.02.03.H29"
    assert parent_code("000.02.03.H29") == "000.00.03.H29"
    assert parent_code("000.00.20.H13") == "000.00.00.H13"
    assert parent_code("000.00.00.H13") is None
    assert level("001.02.03.H29") == 4
    assert level("000.00.00.G22") == 1


DIRECTORY = """
[[agency]]
code = "000.00.00.G22"
name = "Văn phòng Chính phủ"
node = "central"

[[agency]]
code = "000.00.00.H41"
name = "UBND tỉnh Nghệ An"
node = "north"

[[agency]]
code = "000.00.31.H41"
name = "UBND xã Nghi Lộc"
node = "north"

[[agency]]
code = "000.00.32.H41"
name = "UBND xã cũ"
node = "north"
retired = true
successor = "000.00.31.H41"
"""


def test_directory_knows_hierarchy_hosting_and_retired_codes(tmp_path) -> None:
    path = tmp_path / "directory.toml"
    path.write_text(DIRECTORY, encoding="utf-8")
    d = Directory.load(path)
    assert len(d) == 4
    assert d.require("000.00.31.H41").parent == "000.00.00.H41"
    assert [e.code for e in d.children("000.00.00.H41")] == ["000.00.31.H41", "000.00.32.H41"]
    assert [e.code for e in d.hosted_by("north")] == ["000.00.00.H41", "000.00.31.H41", "000.00.32.H41"]
    with pytest.raises(UnknownAgencyError, match=r"successor 000\.00\.31\.H41"):
        d.require_recipient("000.00.32.H41")
    with pytest.raises(UnknownAgencyError, match="not in the directory"):
        d.require("000.00.00.H99")


def test_directory_refuses_duplicates_and_bad_codes(tmp_path) -> None:
    path = tmp_path / "d.toml"
    path.write_text(DIRECTORY + '\n[[agency]]\ncode = "000.00.00.G22"\nnode = "x"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="twice"):
        Directory.load(path)
    path.write_text('[[agency]]\ncode = "G22"\nnode = "x"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="#1"):
        Directory.load(path)
