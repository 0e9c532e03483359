"""`exchange edxml check / import / export`, run as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from exchange.cli.main import main

WILD = Path(__file__).resolve().parents[1] / "data" / "edxml" / "wild"
HOSTILE = Path(__file__).resolve().parents[1] / "data" / "hostile" / "edxml"
DIRECTORY = str(WILD / "directory.toml")


def test_check_reports_organ_ids_signature_and_that_an_export_changes_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert (
        main(["edxml", "check", str(WILD / "signature_unprefixed_qcvn_namespace.edxml"), "--directory", DIRECTORY]) == 0
    )
    out = capsys.readouterr().out
    assert "edXML document package (new)" in out
    assert "MessageHeader/From/OrganId: 000.00.00.G22 -> 000.00.00.G22 [code]" in out
    assert (
        "legacy signature: edXML/edXMLEnvelope/edXMLHeader/Signature http://www.w3.org/2000/09/xmldsig#rsa-sha1"
    ) in out
    assert "not XMLDSig" in out and "truncated" in out
    assert "an export would change: nothing" in out


def test_check_shows_aliases_and_refused_recipients_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["edxml", "check", str(WILD / "recipient_unmapped_one_of_two.edxml"), "--directory", DIRECTORY, "--json"])
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["recipients"] == ["000.00.00.H41"]
    assert [r["organ_id"] for r in report["refused"]] == ["vxp.unknown.99"]
    assert (
        main(["edxml", "check", str(WILD / "organ_id_hub_system_from.edxml"), "--directory", DIRECTORY, "--json"]) == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert {
        "element": "edXML/edXMLEnvelope/edXMLHeader/MessageHeader/From/OrganId",
        "written": "vxp.saas.03",
        "agency": "000.00.00.G22",
        "how": "alias",
    } in report["organ_ids"]


def test_check_of_a_malformed_package_says_why_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["edxml", "check", str(HOSTILE / "undeclared_prefix.edxml")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("exchange: error [xml-malformed]:") and "\n" not in err


def test_import_then_export_gives_the_package_back(tmp_path: Path) -> None:
    """The console script, as a user runs it: package -> envelope on stdout -> package."""
    exe = Path(sys.executable).with_name("exchange")
    source = WILD / "content_types_zip_wrapped.edxml"
    envelope = tmp_path / "env.xml"
    attachments = tmp_path / "env.attachments"
    done = subprocess.run(
        [str(exe), "edxml", "import", str(source), "--directory", DIRECTORY, "--attachments-dir", str(attachments)],
        capture_output=True,
        timeout=60,
        check=True,
    )
    envelope.write_bytes(done.stdout)
    assert done.stdout.startswith(b"<?xml") and b"<env:EdxmlSource>" in done.stdout
    assert sorted(p.name for p in attachments.iterdir()) == ["qd"]
    out = tmp_path / "again.edxml"
    subprocess.run(
        [str(exe), "edxml", "export", str(envelope), "-o", str(out)], capture_output=True, timeout=60, check=True
    )
    assert out.read_bytes() == source.read_bytes()


def test_export_without_the_attachments_says_where_they_are_expected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    envelope = tmp_path / "env.xml"
    assert (
        main(["edxml", "import", str(WILD / "bussiness_first.edxml"), "--attachments-dir", str(tmp_path / "elsewhere")])
        == 0
    )
    envelope.write_text(capsys.readouterr().out, encoding="utf-8")
    assert main(["edxml", "export", str(envelope)]) == 1
    assert "is not in" in capsys.readouterr().err
