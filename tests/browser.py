"""report.html as a reader's browser shows it: headless Chromium (Debian's `chromium` package, which
.ci/run installs where apt exists) loads the page, a probe script measures it once it has loaded, and
`--dump-dom` hands the measures back; `screenshot` keeps a picture of the page."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Headless, as root in CI (no sandbox there), no GPU; a fixed window so widths are comparable.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=15000"]
PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images].map((image) => ({
    alt: image.alt, complete: image.complete, width: image.naturalWidth, height: image.naturalHeight,
    shown_width: image.getBoundingClientRect().width,
  }));
  const page = document.documentElement;
  document.body.setAttribute("data-probe", JSON.stringify(
    {images: images, scroll_width: page.scrollWidth, client_width: page.clientWidth}));
});
</script>"""


def probe(page: Path, width: int = 1280) -> dict:
    """The page's images (loaded, natural and shown size) and its scroll and client widths, as Chromium
    lays it out in a window `width` pixels wide."""
    text = page.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as folder:
        probed = Path(folder) / page.name
        probed.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
        dom = subprocess.run(
            [CHROMIUM, *FLAGS, f"--window-size={width},900", "--dump-dom", probed.as_uri()],
            capture_output=True, text=True, check=True, timeout=120,
        ).stdout
    found = re.search(r'data-probe="([^"]*)"', dom)
    if found is None:
        raise AssertionError(f"the probe did not run in Chromium; the page it dumped begins: {dom[:300]!r}")
    return json.loads(html.unescape(found[1]))


def screenshot(page: Path, out: Path, width: int = 1280, height: int = 6000) -> None:
    """A PNG of the page's first `height` pixels in a window `width` wide."""
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [CHROMIUM, *FLAGS, f"--window-size={width},{height}", f"--screenshot={out}", page.resolve().as_uri()],
        capture_output=True, check=True, timeout=120,
    )
