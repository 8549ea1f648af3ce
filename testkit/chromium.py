"""The browser the page tests and the page benchmark drive: Debian's Chromium (Playwright cannot
download browsers here)."""

from __future__ import annotations

import os

CHROMIUM = os.environ.get("LIVEDM_CHROMIUM", "/usr/bin/chromium")
# As root Chromium needs --no-sandbox; the rest keep it off this machine's closed network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
