"""The page at / in a real browser: headless Chromium (Debian's `chromium`, driven by Playwright's Python package)
loads it from a real `vitzoo serve` on 127.0.0.1, uploads a photograph, and finds the top-5 with bars and the
attention overlay rendered, at a phone's width, with nothing fetched from anywhere else."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("no /usr/bin/chromium (apt-get install -y chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="no playwright (pip install playwright)")

from test_serve import NAME, PHOTOS, ServerProcess  # noqa: E402  (its importorskips apply here too)

pytestmark = pytest.mark.slow  # Chromium and a server

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import vitzoo
    from safetensors.torch import save_file
    from vitzoo.infer import lively_init_

    folder = tmp_path_factory.mktemp("serve_browser")
    weights = folder / "deit_tiny.safetensors"
    save_file(lively_init_(vitzoo.create_model(NAME)).state_dict(), str(weights))
    srv = ServerProcess(["--model", NAME, "--weights", str(weights)], folder / "server.log")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def test_the_page_classifies_a_photo_and_shows_its_attention(server, tmp_path):
    photo = PHOTOS / "chelsea.png"
    expected = server.client.post("/v1/classify", params={"top_k": 5}, files={"file": (photo.name, photo.read_bytes())})
    expected_labels = [t["label"] for t in expected.json()["top"]]
    elsewhere = []

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)  # a phone
            page.on("request", lambda r: None if r.url.startswith((server.url, "blob:", "data:")) else elsewhere.append(r.url))
            page.goto(server.url + "/")
            page.wait_for_function("document.querySelector('#model').textContent.includes('DeiT')")
            page.set_input_files("#file", str(photo))

            page.wait_for_selector("#top5 li:nth-child(5)", timeout=30_000)
            page.wait_for_selector("#overlay[data-state=ready]", timeout=30_000)
            assert page.locator("#top5 li .label").all_inner_texts() == expected_labels
            assert page.locator("#top5 li").count() == 5
            page.wait_for_function("[...document.querySelectorAll('#top5 .bar')].every(b => b.offsetWidth > 0)")
            overlay = page.eval_on_selector("#overlay", "img => [img.naturalWidth, img.naturalHeight, img.offsetWidth]")
            assert overlay[:2] == [224, 224] and overlay[2] > 100
            assert page.eval_on_selector("#preview", "img => img.naturalWidth") == 451  # chelsea.png, as uploaded
            assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling on a phone
            assert "error" not in (page.get_attribute("#status", "class") or "")
            page.screenshot(path=str(tmp_path / "page_phone.png"), full_page=True)

            # the toggle: the crop the model saw, then the class token's map
            with_overlay = page.get_attribute("#overlay", "src")
            page.uncheck("#attention-toggle")
            page.wait_for_function(f"document.querySelector('#overlay').src !== {with_overlay!r}")
            page.wait_for_selector("#overlay[data-state=ready]")
            assert page.inner_text("#view-title") == "What the model saw"
            page.check("#attention-toggle")
            page.check("input[name=method][value=cls]")
            page.wait_for_function("document.querySelector('#view-title').textContent.includes('class token')")
            page.wait_for_selector("#overlay[data-state=ready]")

            # a second photograph, dropped on the page
            coffee = base64.b64encode((PHOTOS / "coffee.png").read_bytes()).decode()
            before = page.locator("#top5 li .label").all_inner_texts()
            page.evaluate(
                """data => {
                    const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
                    const transfer = new DataTransfer();
                    transfer.items.add(new File([bytes], "coffee.png", { type: "image/png" }));
                    document.querySelector("#drop").dispatchEvent(new DragEvent("drop", { dataTransfer: transfer }));
                }""",
                coffee,
            )
            page.wait_for_function(f"document.querySelector('#status').textContent.includes('ms') && "
                                   f"[...document.querySelectorAll('#top5 .label')].map(e => e.textContent).join() "
                                   f"!== {','.join(before)!r}")  # fmt: skip
            page.wait_for_selector("#overlay[data-state=ready]")

            # a file that is not an image: the server's message, shown on the page
            page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"}])
            page.wait_for_selector("#status.error")
            assert "not an image" in page.inner_text("#status")

            # a 1x60000 strip: refused by the server (it would resize past 16 megapixels), and its preview stays on
            # the screen instead of growing 60000 pixels tall
            strip = io.BytesIO()
            Image.new("RGB", (1, 60000), (200, 30, 30)).save(strip, format="PNG")
            page.set_input_files("#file", files=[{"name": "strip.png", "mimeType": "image/png",
                                                  "buffer": strip.getvalue()}])  # fmt: skip
            page.wait_for_function("document.querySelector('#preview').naturalHeight === 60000")
            page.wait_for_selector("#status.error")
            assert page.eval_on_selector("#preview", "img => img.getBoundingClientRect().height") <= 844

            desktop = browser.new_page(viewport={"width": 1200, "height": 800})
            desktop.goto(server.url + "/")
            desktop.set_input_files("#file", str(photo))
            desktop.wait_for_selector("#overlay[data-state=ready]", timeout=30_000)
            desktop.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        finally:
            browser.close()
    assert elsewhere == []  # everything came from the server itself
    assert (tmp_path / "page.png").stat().st_size > 10_000 and (tmp_path / "page_phone.png").stat().st_size > 10_000
