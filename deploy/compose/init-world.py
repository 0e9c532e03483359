"""Create the compose stack's shared world once: development CA, agency keys, directory.

Runs in the `init` service before node-a and node-b start and writes to the `world`
volume (/var/lib/exchange/world). Idempotent: existing keys and certificates are kept.
Stable names for the node TOMLs: pki/ca.pem, pki/crl.pem, pki/agencies/<code>.key|.pem,
directory.toml. Development PKI only: production agencies bring their own keys.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from exchange.devworld import AgencySpec, build_world

WORLD = Path(sys.argv[1] if len(sys.argv) > 1 else "/var/lib/exchange/world")

AGENCIES = (
    AgencySpec("000.00.00.G22", "Văn phòng Chính phủ", node="node-a"),
    AgencySpec("000.00.00.H41", "UBND tỉnh Nghệ An", node="node-a"),
    AgencySpec("000.00.00.H29", "UBND Thành phố Hồ Chí Minh", node="node-b", ec=True),
    AgencySpec("000.00.31.H41", "UBND xã Nghi Lộc, tỉnh Nghệ An", node="node-b"),
)


def main() -> int:
    build_world(WORLD, AGENCIES, [])  # PKI + directory.toml only; the node TOMLs are in deploy/compose
    from exchange.devworld import issue_identities

    out = WORLD / "pki" / "agencies"
    out.mkdir(parents=True, exist_ok=True)
    for code, (key, cert) in issue_identities(WORLD / "pki", AGENCIES).items():
        shutil.copyfile(key, out / f"{code}.key")
        (out / f"{code}.key").chmod(0o600)
        shutil.copyfile(cert, out / f"{code}.pem")
    print(f"world ready in {WORLD}: {', '.join(a.code for a in AGENCIES)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
