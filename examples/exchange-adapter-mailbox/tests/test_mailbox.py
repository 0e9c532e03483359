"""The mailbox protocol on its own (no bus): answers stick, so an offer repeated after a crash is no second copy."""

import tomllib
from importlib import import_module
from pathlib import Path

from exchange_mailbox import mailbox
from exchange_mailbox.adapter import MailboxAdapter
from exchange_mailbox.mailbox import Mailbox


def _offer(path: Path, message_id: str) -> tuple[str, str]:
    row = {
        "message_id": message_id,
        "kind": "document",
        "sender": "000.00.00.G22",
        "envelope": b"<Envelope/>",
        "subject": "Công văn",
    }
    return mailbox.offer(path, row, [("a.txt", "text/plain", b"\x00bytes")])


def test_an_accepted_message_offered_again_stays_one_accepted_message(tmp_path: Path) -> None:
    box = Mailbox(tmp_path / "mailbox.db")
    assert _offer(box.path, "m-1") == ("offered", "")
    assert [o.message_id for o in box.offers()] == ["m-1"]
    assert box.accept("m-1")
    assert _offer(box.path, "m-1") == ("accepted", "")  # the adapter answers delivered, writes nothing
    (got,) = box.accepted()
    assert got.files == {"a.txt": b"\x00bytes"} and got.subject == "Công văn"


def test_a_deferred_message_is_offered_again_and_a_rejection_is_final(tmp_path: Path) -> None:
    box = Mailbox(tmp_path / "mailbox.db")
    _offer(box.path, "m-1")
    box.defer("m-1", "busy")
    assert _offer(box.path, "m-1") == ("offered", "")
    (again,) = box.offers()
    assert again.offers == 2
    box.reject("m-1", "not ours")
    assert _offer(box.path, "m-1") == ("rejected", "not ours")
    assert box.accepted() == []


def test_the_entry_point_names_the_adapter_class() -> None:
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    target = pyproject["project"]["entry-points"]["exchange.adapters"]["mailbox"]
    module, _, name = target.partition(":")
    assert getattr(import_module(module), name) is MailboxAdapter
    assert MailboxAdapter.kind == "mailbox"
