"""A national agency directory for development and benchmarks: the shape of Vietnam since July 2025.

34 provincial-level units (6 cities, 28 provinces), 3,321 communes under them, the
Government Office and a few ministries: 3,360 agencies. Codes follow QCVN 102
(``NNN.NN.NN.XNN``): a province is level 1 (``000.00.00.H41``), its communes are
level 2 (``000.00.NN.H41``, NN from 01), so every commune's parent is its province.
Level 2 has two digits, which is why no province gets more than 99 communes here
(3,321 over 34 is 97.7: 23 provinces with 98 and 11 with 97).

The province letters and numbers are valid and unique but are not the official code
list (only ``H29`` Hồ Chí Minh and ``H41`` Nghệ An match DOMAIN.md's examples); the
commune names are generated. This is test data, not a registry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from exchange.envelope.codes import check_agency_code, parent_code

GOVERNMENT_OFFICE = "000.00.00.G22"
COMMUNES = 3321

#: The 34 provincial-level units since 1 July 2025 (Resolution 202/2025/QH15), with generated codes.
PROVINCES: tuple[tuple[str, str], ...] = (
    ("H01", "Thành phố Hà Nội"),
    ("H29", "Thành phố Hồ Chí Minh"),
    ("H31", "Thành phố Hải Phòng"),
    ("H43", "Thành phố Đà Nẵng"),
    ("H46", "Thành phố Huế"),
    ("H65", "Thành phố Cần Thơ"),
    ("H02", "Tỉnh Tuyên Quang"),
    ("H04", "Tỉnh Cao Bằng"),
    ("H07", "Tỉnh Lai Châu"),
    ("H08", "Tỉnh Lào Cai"),
    ("H10", "Tỉnh Thái Nguyên"),
    ("H11", "Tỉnh Điện Biên"),
    ("H12", "Tỉnh Lạng Sơn"),
    ("H14", "Tỉnh Sơn La"),
    ("H15", "Tỉnh Phú Thọ"),
    ("H17", "Tỉnh Bắc Ninh"),
    ("H22", "Tỉnh Quảng Ninh"),
    ("H33", "Tỉnh Hưng Yên"),
    ("H37", "Tỉnh Ninh Bình"),
    ("H38", "Tỉnh Thanh Hóa"),
    ("H41", "Tỉnh Nghệ An"),
    ("H42", "Tỉnh Hà Tĩnh"),
    ("H45", "Tỉnh Quảng Trị"),
    ("H51", "Tỉnh Quảng Ngãi"),
    ("H52", "Tỉnh Gia Lai"),
    ("H56", "Tỉnh Khánh Hòa"),
    ("H66", "Tỉnh Đắk Lắk"),
    ("H68", "Tỉnh Lâm Đồng"),
    ("H75", "Tỉnh Đồng Nai"),
    ("H72", "Tỉnh Tây Ninh"),
    ("H86", "Tỉnh Vĩnh Long"),
    ("H87", "Tỉnh Đồng Tháp"),
    ("H89", "Tỉnh An Giang"),
    ("H96", "Tỉnh Cà Mau"),
)

#: A few ministries (level-1 G codes), besides the Government Office.
MINISTRIES: tuple[tuple[str, str], ...] = (
    ("000.00.00.G03", "Bộ Nội vụ"),
    ("000.00.00.G06", "Bộ Tài chính"),
    ("000.00.00.G09", "Bộ Tư pháp"),
    ("000.00.00.G12", "Bộ Khoa học và Công nghệ"),
    ("000.00.00.G15", "Bộ Công an"),
)


@dataclass(frozen=True, slots=True)
class NationalAgency:
    """One agency of the generated national directory."""

    code: str
    name: str
    kind: str  # "government", "ministry", "province" or "commune"
    province: str | None = None  # the province's code, for provinces and communes

    @property
    def parent(self) -> str | None:
        return parent_code(self.code)


def commune_counts(total: int = COMMUNES, provinces: int = len(PROVINCES)) -> list[int]:
    """Communes per province, as even as possible (the first ones get one more)."""
    base, extra = divmod(total, provinces)
    counts = [base + (1 if i < extra else 0) for i in range(provinces)]
    if max(counts) > 99:
        raise ValueError(
            f"{total} communes over {provinces} provinces needs more than 99 per province, "
            "which a level-2 QCVN code cannot number"
        )
    return counts


def national_agencies(communes: int = COMMUNES) -> list[NationalAgency]:
    """The Government Office, the ministries, the 34 provinces and ``communes`` communes (3,321 by default)."""
    out = [NationalAgency(GOVERNMENT_OFFICE, "Văn phòng Chính phủ", "government")]
    out += [NationalAgency(code, name, "ministry") for code, name in MINISTRIES]
    for (group, name), count in zip(PROVINCES, commune_counts(communes), strict=True):
        province = f"000.00.00.{group}"
        out.append(NationalAgency(province, f"UBND {name[0].lower()}{name[1:]}", "province", province))
        short = name.removeprefix("Thành phố ").removeprefix("Tỉnh ")
        for n in range(1, count + 1):
            out.append(NationalAgency(f"000.00.{n:02d}.{group}", f"UBND xã số {n}, {short}", "commune", province))
    codes = [check_agency_code(a.code) for a in out]
    assert len(set(codes)) == len(codes), "generated codes must be unique"
    return out


def province_node(province_code: str) -> str:
    """The node name of a province's hub in the provincial layout: ``p-h41`` for ``000.00.00.H41``."""
    return f"p-{province_code[-3:].lower()}"


def layout(agencies: list[NationalAgency], how: str) -> Callable[[NationalAgency], str]:
    """Which node hosts each agency: ``central`` (everything but the sender on one node ``recipients``)
    or ``provincial`` (each province and its communes on the province's node)."""
    if how == "central":
        return lambda a: "national" if a.kind in ("government", "ministry") else "recipients"
    if how == "provincial":
        return lambda a: "national" if a.province is None else province_node(a.province)
    raise ValueError(f"unknown layout {how!r}; use 'central' or 'provincial'")


def iter_toml(agencies: list[NationalAgency], node_of: Callable[[NationalAgency], str]) -> Iterator[str]:
    """The ``[[agency]]`` tables of a directory file (no certificates: ``exchange pki issue`` adds those)."""
    import json

    yield "# National agency directory (generated by exchange.routing.national; test data, not a registry)\n"
    for a in agencies:
        yield f'[[agency]]\ncode = "{a.code}"\nname = {json.dumps(a.name, ensure_ascii=False)}\nnode = "{node_of(a)}"\n'


def write_directory(path: Path, *, how: str = "central", communes: int = COMMUNES) -> int:
    """Write a national directory TOML to ``path``; returns the number of agencies."""
    agencies = national_agencies(communes)
    path.write_text("\n".join(iter_toml(agencies, layout(agencies, how))), encoding="utf-8")
    return len(agencies)
