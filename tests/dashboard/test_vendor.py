"""The dashboard's vendored charting library is what dashboards/vendor/VERSIONS records."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = REPO / "dashboards"


def test_vendored_files_match_their_recorded_sha256() -> None:
    lines = [
        line
        for line in (DASHBOARDS / "vendor" / "VERSIONS").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines, "vendor/VERSIONS lists no file: run dashboards/vendor.sh"
    for line in lines:
        digest, name = line.split(maxsplit=1)
        data = (DASHBOARDS / "vendor" / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, (
            f"dashboards/vendor/{name} differs from vendor/VERSIONS: edited by hand? "
            "Run dashboards/vendor.sh to vendor it again from package-lock.json"
        )


def test_the_vendored_version_is_the_one_package_lock_pins() -> None:
    lock = json.loads((DASHBOARDS / "package-lock.json").read_text())
    pinned = lock["packages"]["node_modules/uplot"]["version"]
    versions = (DASHBOARDS / "vendor" / "VERSIONS").read_text()
    assert f"# uplot {pinned} " in versions
    assert (DASHBOARDS / "vendor" / "uplot" / "LICENSE").read_text().startswith("The MIT License")


def test_the_page_loads_nothing_from_outside_the_gateway() -> None:
    # No CDN at run time: every script and stylesheet is a relative path under dashboards/.
    for name in ("index.html", "app.js", "charts.js"):
        text = (DASHBOARDS / name).read_text()
        assert "http://" not in text and "https://" not in text, name
