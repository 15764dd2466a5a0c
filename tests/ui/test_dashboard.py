"""The dashboard in a real headless browser: Debian's Chromium driven by playwright-python
(``executable_path``: no browser download) against a real server. Runs in ``make ui-test``
(marker ``browser``), which `.ci/run` calls after installing Debian's chromium; `make test`
leaves it out. Screenshots go to ``$UI_ARTIFACTS`` (default ``ui-artifacts/``)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import ServerProcess, copy_models, pytest_runtest_makereport  # noqa: F401

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("UI_ARTIFACTS", Path(__file__).resolve().parents[2] / "ui-artifacts"))
ADMIN, READ = "ui-admin-key-0123456789abcdef", "ui-read-key-0123456789abcdef"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install chromium (make ui-test needs it)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield launched
        launched.close()


@pytest.fixture
def server(trained_registry_path: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    registry = copy_models(trained_registry_path, tmp_path / "models", ["airline", "tourism-monthly"])
    process = ServerProcess(registry, tmp_path / "server.log", FORECAST_API_KEYS=f"admin:{ADMIN},read:{READ}").start()
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def use_key(page: Any, key: str) -> None:
    page.fill("#key", key)
    page.click("#key-use")


def test_pick_a_model_and_series_see_the_chart_retrain_and_promote(browser: Any, server: ServerProcess) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{server.base_url}/ui")
    page.wait_for_selector("#notice:not([hidden])")
    assert "needs an API key" in page.inner_text("#notice")
    assert page.inner_text("#role") == "key needed"
    assert page.locator("#models tbody tr").count() == 0

    use_key(page, READ)  # read-only: looks, cannot promote or retrain
    page.wait_for_selector("#models tbody tr[data-model='tourism-monthly']")
    assert page.inner_text("#role") == "read-only"
    assert page.locator("#key").input_value() == ""  # the key is not left in the field
    page.click("#models tbody tr[data-model='tourism-monthly']")
    page.wait_for_selector("#series option[value='T003']", state="attached")
    assert page.locator("#retrain").is_disabled()
    page.select_option("#series", "T003")
    page.fill("#horizon", "6")
    page.click("#forecast-form button[type=submit]")
    page.wait_for_selector("#chart:not([hidden])")
    page.wait_for_function("document.getElementById('chart').naturalWidth > 100")
    assert page.get_attribute("#chart", "data-series") == "T003"
    assert "T003: 6 steps" in page.inner_text("#chart-caption")
    page.screenshot(path=str(ARTIFACTS / "dashboard-forecast.png"), full_page=True)

    use_key(page, ADMIN)
    page.wait_for_selector("#role.admin")
    page.click("#models tbody tr[data-model='airline']")
    page.wait_for_selector("#versions tbody tr[data-version='1']")
    assert not page.locator("#retrain").is_disabled()
    page.click("#retrain")
    page.wait_for_selector("#jobs tbody tr[data-status]")
    kinds = page.locator("#jobs tbody tr td:nth-child(2)").all_inner_texts()
    assert kinds[0] == "retrain"
    page.wait_for_selector("#jobs tbody tr[data-status='succeeded']", timeout=120_000)  # progress polled to the end
    page.wait_for_selector("#versions tbody tr[data-version='2']")
    assert page.locator("#jobs tbody tr progress").first.get_attribute("value") is not None
    page.screenshot(path=str(ARTIFACTS / "dashboard-retrain.png"), full_page=True)

    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {ADMIN}"}) as api:
        production = api.get("/v1/models/airline").json()["aliases"]["production"]
        other = 1 if production == 2 else 2
        page.click(f"#versions tbody tr[data-version='{other}'] button")
        page.wait_for_selector(f"#notice:has-text('production -> v{other}')")
        assert api.get("/v1/models/airline").json()["aliases"]["production"] == other
    page.wait_for_selector(f"#models tbody tr[data-model='airline'] td:has-text('v{other}')")
    page.screenshot(path=str(ARTIFACTS / "dashboard-promoted.png"), full_page=True)
    assert not errors, errors


def test_open_loopback_mode_needs_no_key_and_a_bad_key_is_said_so(
    browser: Any, trained_registry_path: Path, tmp_path: Path
) -> None:
    registry = copy_models(trained_registry_path, tmp_path / "models", ["airline"])
    process = ServerProcess(registry, tmp_path / "server.log").start()
    try:
        process.wait_ready()
        page = browser.new_page()
        page.goto(f"{process.base_url}/ui/")
        page.wait_for_selector("#models tbody tr[data-model='airline']")
        assert "admin" in page.inner_text("#role")
        page.click("#models tbody tr[data-model='airline']")
        page.wait_for_selector("#monitoring p")
        assert "actuals joined" in page.inner_text("#monitoring")
        assert not page.locator("#retrain").is_disabled()
        r = httpx.get(f"{process.base_url}/ui/")
        assert "script-src 'self'" in r.headers["content-security-policy"]
    finally:
        process.stop()
