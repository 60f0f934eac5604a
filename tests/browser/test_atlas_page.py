"""The exported atlas page in a real browser: Debian's headless Chromium, driven by Playwright.

The test setup installs Chromium with apt-get when it is missing (as root); where that cannot be
done the test is skipped with a message saying so. A screenshot lands in build/test-artifacts/.
"""

import os
import shutil
import subprocess

import numpy as np
import pytest

from featlib import atlas
from featlib.config import REPO

pytestmark = pytest.mark.slow  # headless Chromium (over a minute)

ARTIFACTS = REPO / "build" / "test-artifacts"


def chromium() -> str | None:
    path = shutil.which("chromium")
    if path is None and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "install", "-y", "-q", "chromium"], ["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
            if subprocess.run(cmd, env=env, capture_output=True).returncode == 0 and shutil.which("chromium"):
                break
        path = shutil.which("chromium")
    return path


@pytest.fixture(scope="module")
def page():
    path = chromium()
    if path is None:
        pytest.skip("Debian's chromium is not installed and cannot be installed here (apt-get as root): "
                    "the atlas browser test needs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield browser.new_page(viewport={"width": 1400, "height": 800})
        browser.close()


def synthetic_atlas() -> atlas.Atlas:
    """Two clusters per panel; A's left cluster (points 0-9) pairs with B points scattered over both
    of B's clusters, A point 3 has two partners (best-partner matching is many-to-one)."""
    rng = np.random.default_rng(0)
    xy_a = np.concatenate([rng.normal(0, 0.3, (10, 2)), rng.normal(6, 0.3, (10, 2))])
    xy_b = np.concatenate([rng.normal(0, 0.3, (12, 2)), rng.normal(6, 0.3, (12, 2))])
    partner = rng.permutation(24)[:20]
    pairs = [(i, int(partner[i])) for i in range(20)] + [(3, int(np.setdiff1d(np.arange(24), partner)[0]))]
    r = np.round(np.linspace(0.2, 0.95, len(pairs)), 3)
    return atlas.Atlas(
        ids=("A", "B"), layers=(2, 3), pool_a=np.arange(20), pool_b=np.arange(24), xy_a=xy_a, xy_b=xy_b,
        pairs=np.array(pairs), r=r, hover_a=[f"A feature {i}" for i in range(20)], hover_b=[f"B feature {i}" for i in range(24)],
        group_a=["Time" if i % 3 == 0 else "" for i in range(20)], group_b=["Time" if i % 4 == 0 else "" for i in range(24)],
        matching="best", stats={"neighbourhood": {"k": 5, "score": 0.4, "null_mean": 0.2, "null_std": 0.05, "p": 0.01}},
    )


def highlighted(page, side):
    """The DATA indices of the points the panel shows as selected (from the plot itself)."""
    return page.evaluate(
        """side => { const t = document.getElementById('panel-' + side).data[0];
             return (t.selectedpoints || []).map(k => t.customdata[k]).sort((a, b) => a - b); }""", side)


def test_selection_in_one_panel_highlights_exactly_the_partners(page, tmp_path):
    at = synthetic_atlas()
    path = atlas.write_html(at, tmp_path / "atlas.html")
    page.goto(path.as_uri())
    page.wait_for_function("window.atlasReady === true")
    assert page.evaluate("document.getElementById('panel-A').data[0].x.length") == 20

    atlas.select_box(page, "A", -2, -2, 2, 2)  # A's left cluster: points 0-9
    expected_b = sorted({j for i, j in at.pairs.tolist() if i < 10})
    assert highlighted(page, "A") == list(range(10))
    assert highlighted(page, "B") == expected_b and len(expected_b) == 11
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "atlas_selection.png"), full_page=True)

    page.click("#clear")
    atlas.select_box(page, "B", 4, 4, 8, 8)  # B's right cluster: points 12-23
    expected_a = sorted({i for i, j in at.pairs.tolist() if j >= 12})
    assert highlighted(page, "A") == expected_a

    # the slider hides pairs below r: partners through weaker pairs are no longer highlighted
    page.eval_on_selector("#minr", "el => { el.value = '0.6'; el.dispatchEvent(new Event('input')); }")
    shown_a = page.evaluate("document.getElementById('panel-A').data[0].customdata")
    assert shown_a == sorted({i for (i, _), r in zip(at.pairs.tolist(), at.r) if r >= 0.6})
    atlas.select_box(page, "A", -2, -2, 8, 8)  # every shown A point
    assert highlighted(page, "B") == sorted({j for (i, j), r in zip(at.pairs.tolist(), at.r) if r >= 0.6})


def test_page_is_self_contained(tmp_path):
    html = atlas.write_html(synthetic_atlas(), tmp_path / "atlas.html").read_text()
    assert "<script src=" not in html and "https://" not in html.split("const DATA")[1]
    assert "neighbourhood preservation (k = 5) 0.400" in html
