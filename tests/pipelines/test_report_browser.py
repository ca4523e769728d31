"""The report renders in a real browser: headless Chromium decodes every embedded image.

The page's own script sets ``data-images="ok"`` on ``<body>`` only when every ``<img>`` has
``naturalWidth > 0``; Chromium's ``--dump-dom`` shows the DOM after scripts ran. A page with one
corrupted image must come back ``broken``, which proves the check can fail. ``make test``
installs Chromium first (``.ci/setup-chromium``, Debian package ``chromium``).
"""

import re
import shutil
import subprocess

import numpy as np
import pytest

from winnow.pipelines.report import render_report
from winnow.store import ScoreStore

_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def _chromium(tmp_path, *args: str) -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("the report browser test needs Chromium: sudo apt-get install -y chromium")
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    done = subprocess.run(
        [exe, *_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def _store(tmp_path) -> ScoreStore:
    rng = np.random.default_rng(0)
    n = 400
    store = ScoreStore(tmp_path / "store")
    loss = rng.gamma(2.0, 0.5, n)
    store.write("scored", "loss", np.arange(n), loss)
    store.write("scored", "learnability", np.arange(n), loss - rng.gamma(2.0, 0.3, n))
    store.write("scored", "cluster", np.arange(n), rng.integers(0, 5, n).astype(float))
    writer = store.trace_writer("trained")
    for epoch in range(3):
        writer.write(epoch, np.arange(n), rng.random(n) < 0.6, None, rng.random(n))
    # per-step records, a domain mixture and a noise scale, as selectors and monitors write them
    steps = np.repeat(np.arange(30), 20)
    store.trace_writer("selected").write_steps(
        steps,
        rng.integers(0, n, steps.size),
        rng.random(steps.size) < 0.2,
        score=rng.random(steps.size),
    )
    mixture = store.trace_writer("mixed")
    pi = rng.dirichlet(np.ones(3), 30)
    mixture.write_mixture(
        np.repeat(np.arange(30), 3),
        np.tile(np.arange(3), 30),
        pi.ravel(),
        np.tile([True, False, False], 30),
    )
    mixture.write_steps(np.repeat(np.arange(30), 4), rng.integers(0, n, 120), np.ones(120, bool))
    store.trace_writer("noise").write_noise_scale(
        np.arange(0, 300, 10),
        np.linspace(20, 200, 30),
        np.ones(30),
        np.linspace(20, 200, 30),
        np.full(30, 64),
        "two_batch",
    )
    return store


def _body_attrs(dom: str) -> dict[str, str]:
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:500]
    return dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(1)))


def test_report_renders_with_images_in_chromium(tmp_path):
    page = render_report(_store(tmp_path))
    n_images = page.count("<img ")
    # scores 3, epoch trace 2, per-step trace 2, mixture run 2 + 1, noise scale 1
    assert n_images == 11
    path = tmp_path / "report.html"
    path.write_text(page, encoding="utf-8")

    attrs = _body_attrs(_chromium(tmp_path, "--dump-dom", path.as_uri()))
    assert attrs.get("data-images") == "ok", attrs
    assert attrs.get("data-images-loaded") == f"{n_images}/{n_images}"

    shot = tmp_path / "shot.png"
    _chromium(tmp_path, "--window-size=1100,1400", f"--screenshot={shot}", path.as_uri())
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[:2] == (1400, 1100)
    # a rendered page has plots and text, not one flat colour
    assert pixels[..., :3].std() > 0.05


def test_broken_image_is_detected(tmp_path):
    page = render_report(_store(tmp_path))
    first = page.index("data:image/png;base64,") + len("data:image/png;base64,")
    broken = page[:first] + "AAAA" + page[first + 4 :]
    path = tmp_path / "broken.html"
    path.write_text(broken, encoding="utf-8")
    attrs = _body_attrs(_chromium(tmp_path, "--dump-dom", path.as_uri()))
    assert attrs.get("data-images") == "broken", attrs
    assert attrs.get("data-images-loaded") == "10/11"
