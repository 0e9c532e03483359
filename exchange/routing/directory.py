"""The agency directory: who exists, who is whose parent, and which node hosts whom.

Loaded from a TOML file of ``[[agency]]`` tables, or a JSON file ``{"agency": [...]}``
holding the same objects (code, name, node, optional cert and
``retired``/``successor`` for re-mapped codes after administrative mergers: a
retired code keeps its history but receives nothing new; optional ``aliases``,
the ids other directories use for the agency, such as the hub's system id
``vxp.saas.03`` or a unit id ``020100107370``, which edXML packages carry in
place of its QCVN 102 code: docs/EDXML.md, Organ ids; optional ``hub``, the
hub (RabbitMQ installation) whose broker the agency's node uses: docs/FEDERATION.md).
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from exchange.envelope.codes import check_agency_code, level, parent_code
from exchange.errors import ConfigError, ExchangeError, UnknownAgencyError


@dataclass(frozen=True, slots=True)
class AgencyEntry:
    """One agency in the directory."""

    code: str
    name: str
    node: str
    cert: Path | None = None
    retired: bool = False
    successor: str | None = None
    #: Ids that name this agency in other directories (edXML packages in the wild), matched exactly.
    aliases: tuple[str, ...] = ()
    #: The hub whose broker serves this agency's node (docs/FEDERATION.md); None: no hubs in this deployment.
    hub: str | None = None

    @property
    def parent(self) -> str | None:
        return parent_code(self.code)

    @property
    def level(self) -> int:
        return level(self.code)


class Directory:
    """An immutable view of the agency directory."""

    def __init__(self, entries: list[AgencyEntry]) -> None:
        self._by_code: dict[str, AgencyEntry] = {}
        self._by_alias: dict[str, str] = {}
        for e in entries:
            if e.code in self._by_code:
                raise ConfigError(f"agency {e.code} appears twice in the directory")
            self._by_code[e.code] = e
        for e in entries:
            for alias in e.aliases:
                if alias in self._by_code or self._by_alias.get(alias, e.code) != e.code:
                    other = alias if alias in self._by_code else self._by_alias[alias]
                    raise ConfigError(
                        f"alias {alias!r} of agency {e.code} already names agency {other}; an alias names one agency"
                    )
                self._by_alias[alias] = e.code

    @classmethod
    def load(cls, path: str | Path) -> Directory:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
            raw = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
        except FileNotFoundError:
            raise ConfigError(f"agency directory {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"agency directory {path} is not valid TOML: {exc}") from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"agency directory {path} is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict) or not isinstance(raw.get("agency", []), list):
            raise ConfigError(f'agency directory {path} must hold a list of agencies under "agency"')
        entries = []
        for i, a in enumerate(raw.get("agency", [])):
            try:
                cert = a.get("cert")
                entries.append(
                    AgencyEntry(
                        code=check_agency_code(a["code"]),
                        name=a.get("name", a["code"]),
                        node=a["node"],
                        cert=(path.parent / cert) if cert else None,
                        retired=bool(a.get("retired", False)),
                        successor=a.get("successor"),
                        aliases=_aliases(a.get("aliases", [])),
                        hub=_hub(a.get("hub")),
                    )
                )
            except KeyError as exc:
                raise ConfigError(f"{path}: [[agency]] #{i + 1} lacks {exc.args[0]!r}") from None
            except ExchangeError as exc:
                raise ConfigError(f"{path}: [[agency]] #{i + 1}: {exc.message}") from None
            except (TypeError, AttributeError) as exc:
                raise ConfigError(f"{path}: [[agency]] #{i + 1} is malformed ({exc})") from None
        return cls(entries)

    def __iter__(self) -> Iterator[AgencyEntry]:
        return iter(sorted(self._by_code.values(), key=lambda e: (e.code[-3:], e.code)))

    def __len__(self) -> int:
        return len(self._by_code)

    def __contains__(self, code: object) -> bool:
        return code in self._by_code

    def get(self, code: str) -> AgencyEntry | None:
        return self._by_code.get(code)

    def resolve_organ_id(self, organ_id: str) -> str | None:
        """The code of the agency ``organ_id`` names: the code itself, or the agency it is an alias of."""
        if organ_id in self._by_code:
            return organ_id
        return self._by_alias.get(organ_id)

    def require(self, code: str) -> AgencyEntry:
        """The entry for ``code``, or UnknownAgencyError telling the caller what to check."""
        entry = self._by_code.get(code)
        if entry is None:
            raise UnknownAgencyError(
                f"agency {code} is not in the directory; list known agencies with "
                "`exchange directory` or GET /v1/directory"
            )
        return entry

    def require_recipient(self, code: str) -> AgencyEntry:
        """Like require, but also refuses a retired code, naming its successor."""
        entry = self.require(code)
        if entry.retired:
            hint = f"; send to its successor {entry.successor}" if entry.successor else ""
            raise UnknownAgencyError(f"agency {code} is retired and receives nothing new{hint}")
        return entry

    def hosted_by(self, node: str) -> list[AgencyEntry]:
        return [e for e in self if e.node == node]

    def on_hub(self, hub: str) -> list[AgencyEntry]:
        """The agencies whose node uses hub ``hub``'s broker."""
        return [e for e in self if e.hub == hub]

    def same_hub(self, a: str, b: str) -> bool:
        """Whether traffic between ``a`` and ``b`` stays on one hub (never crosses a link)."""
        ha, hb = self.require(a).hub, self.require(b).hub
        return ha == hb

    def children(self, code: str) -> list[AgencyEntry]:
        return [e for e in self if e.parent == code]


def _aliases(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() == v and v for v in value):
        raise ConfigError("aliases must be a list of non-empty ids without surrounding spaces")
    return tuple(value)


def _hub(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or value.strip() != value:
        raise ConfigError('hub must be the non-empty name of a hub, e.g. "h41"')
    return value
