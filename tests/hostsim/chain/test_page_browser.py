"""The 查验 page in a real headless Chromium (Selenium 4 and Debian's chromium and
chromium-driver): a buyer types the receipt's fields, pastes a QR payload, mistypes a
check code, and reads each answer; screenshots go to test-artifacts/."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from device.protocol import qr
from device.protocol.document import Document
from tests.hostsim.chain.test_verify_cli import LiveChain

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts"
WAIT = 20.0
FLAGS = (
    "--headless=new",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    # no network but loopback: nothing may phone home or fetch updates
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=900,1400",
)


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WebDriver]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.skip(
            f"Chromium not installed ({', '.join(missing)} missing): .ci/run installs it with "
            "apt-get (packages chromium, chromium-driver)"
        )
    # The explicit driver path already keeps Selenium Manager out; this keeps it offline
    # should a later Selenium consult it anyway.
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    service = Service(
        executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log")
    )
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(WAIT)
        driver.set_script_timeout(WAIT)
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveChain]:
    chain = LiveChain(tmp_path / "chain")
    try:
        yield chain
    finally:
        chain.stop()


def gone(page: WebElement) -> Callable[[WebDriver], bool]:
    """EC.staleness_of, also for the way Chromium sometimes says it mid-navigation.

    While the old document is torn down, chromedriver may answer a question about
    its node with "unknown error: ... Node with given id does not belong to the
    document" instead of "stale element reference": the same fact, which
    staleness_of does not catch, and the test failed on it now and then.
    """

    def check(_: WebDriver) -> bool:
        try:
            page.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:
            if "does not belong to the document" in str(exc.msg):
                return True
            raise
        return False

    return check


def submit(driver: WebDriver, button: str) -> str:
    """Click a form's button, wait for the answer page, return its data-result."""
    page = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.ID, button).click()
    WebDriverWait(driver, WAIT).until(gone(page))
    result = WebDriverWait(driver, WAIT).until(EC.presence_of_element_located((By.ID, "result")))
    return str(result.get_attribute("data-result"))


def type_fields(driver: WebDriver, doc: Document, check_code: str) -> None:
    values = {
        "c": str(doc.code),
        "n": str(doc.number),
        "d": doc.payload["issued_at"][:10],
        "k": check_code,
    }
    for name, value in values.items():
        box = driver.find_element(By.ID, name)
        box.clear()
        box.send_keys(value)


def screenshot(driver: WebDriver, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    path.unlink(missing_ok=True)
    assert driver.save_screenshot(str(path)), path
    return path


def assert_real_picture(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 5000, path
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) >= 300, (image.format, image.size)
        low, high = image.convert("L").getextrema()  # type: ignore[misc]
        assert high - low > 100, "the screenshot is blank"


def test_a_buyer_verifies_in_a_real_browser(browser: WebDriver, live: LiveChain) -> None:
    first, second = live.issue(2)

    browser.get(f"{live.url}/verify")
    assert "查验 / Verify" in browser.page_source
    assert browser.find_elements(By.ID, "result") == []
    type_fields(browser, first, str(first.check_code)[-6:])
    assert submit(browser, "verify-fields") == "authentic"
    total = f"¥{first.total // 100}.{first.total % 100:02d}"
    assert browser.find_element(By.ID, "total").text == total
    assert browser.find_element(By.ID, "invoice").text == f"{first.code}/{first.number}"
    assert browser.find_element(By.ID, "seller").text == first.payload["seller"]["name"]
    training = browser.find_element(By.ID, "training")
    assert training.is_displayed() and "not a valid invoice" in training.text
    rows = browser.find_elements(By.CSS_SELECTOR, "#history tbody tr")
    assert [r.get_attribute("data-event") for r in rows] == ["issued"]
    assert_real_picture(screenshot(browser, "verify-page-authentic.png"))

    # the answer page carries the form again: paste the second receipt's QR payload
    payload = qr.for_document(second.payload).to_payload()
    box = browser.find_element(By.ID, "q")
    box.clear()
    box.send_keys(payload)
    assert submit(browser, "verify-payload") == "authentic"
    assert browser.find_element(By.ID, "invoice").text == f"{second.code}/{second.number}"

    type_fields(browser, second, "000000")
    assert submit(browser, "verify-fields") == "mismatch"
    mismatched = browser.find_element(By.ID, "mismatched")
    assert mismatched.get_attribute("data-fields") == "check_code"
    assert browser.find_elements(By.ID, "total") == []
    assert_real_picture(screenshot(browser, "verify-page-mismatch.png"))


PHONE = (390, 844)  # a common phone's CSS viewport
DESKTOP = (1280, 900)
# Shown as one piece each: a code, number or tax id broken mid-digit is misread.
UNBROKEN = ("seller-tax-id", "invoice", "total", "height")
LAYOUT = """
const view = window.innerWidth;
// the lines the element's text is laid out on (a Range's rects, one per line
// fragment, whether the element is inline or a block)
const piece = id => {
  const el = document.getElementById(id);
  const range = document.createRange();
  range.selectNodeContents(el);
  const tops = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
  return {lines: tops.size, right: range.getBoundingClientRect().right};
};
const box = document.getElementById('history-scroll');
const before = box.scrollLeft;
box.scrollLeft = 100;
const scrolled = box.scrollLeft;
box.scrollLeft = before;
return {
  view: view,
  page: document.documentElement.scrollWidth,
  pieces: Object.fromEntries(arguments[0].map(id => [id, piece(id)])),
  issued: document.getElementById('issued-at').getBoundingClientRect().right,
  table: {scroll: box.scrollWidth, client: box.clientWidth, scrolled: scrolled,
          right: box.getBoundingClientRect().right},
};
"""


def viewport(driver: WebDriver, size: tuple[int, int], mobile: bool) -> None:
    width, height = size
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {
            "width": width,
            "height": height,
            "deviceScaleFactor": 2 if mobile else 1,
            "mobile": mobile,
        },
    )
    driver.refresh()
    WebDriverWait(driver, WAIT).until(EC.presence_of_element_located((By.ID, "history")))
    driver.execute_script("window.scrollTo(0, 0)")  # a reload keeps the old position


def layout(driver: WebDriver) -> dict[str, Any]:
    found = driver.execute_script(LAYOUT, list(UNBROKEN))
    assert isinstance(found, dict), found
    return found


def test_the_answer_fits_a_phone_and_a_desktop(browser: WebDriver, live: LiveChain) -> None:
    [doc] = live.issue(1)
    browser.get(
        f"{live.url}/verify?c={doc.code}&n={doc.number}&d={doc.payload['issued_at'][:10]}"
        f"&k={str(doc.check_code)[-6:]}"
    )
    assert browser.find_element(By.ID, "result").get_attribute("data-result") == "authentic"
    shown = browser.find_element(By.ID, "issued-at").text
    assert shown.endswith(" +08:00 (Asia/Shanghai)"), shown

    viewport(browser, PHONE, mobile=True)
    phone = layout(browser)
    assert_real_picture(screenshot(browser, "verify-page-phone.png"))
    assert phone["view"] == PHONE[0], phone
    assert phone["page"] <= phone["view"], phone  # nothing makes the page scroll sideways
    assert {k: v["lines"] for k, v in phone["pieces"].items()} == dict.fromkeys(UNBROKEN, 1)
    assert all(v["right"] <= phone["view"] for v in phone["pieces"].values()), phone
    assert phone["issued"] <= phone["view"], phone
    table = phone["table"]
    # the history is wider than a phone: its own box scrolls, inside the card
    assert table["scroll"] > table["client"] and table["scrolled"] > 0, table
    assert table["right"] <= phone["view"], table
    browser.execute_script("document.getElementById('history-scroll').scrollIntoView()")
    assert_real_picture(screenshot(browser, "verify-page-phone-history.png"))

    viewport(browser, DESKTOP, mobile=False)
    desktop = layout(browser)
    assert_real_picture(screenshot(browser, "verify-page-desktop.png"))
    assert desktop["view"] == DESKTOP[0] and desktop["page"] <= desktop["view"], desktop
    assert {k: v["lines"] for k, v in desktop["pieces"].items()} == dict.fromkeys(UNBROKEN, 1)
    assert desktop["table"]["scroll"] <= desktop["table"]["client"], desktop  # room enough
    # side by side on a desktop: the label column and the value share a row
    label = browser.find_element(By.CSS_SELECTOR, "#result dt").rect
    value = browser.find_element(By.ID, "seller").rect
    assert abs(label["y"] - value["y"]) < label["height"] and value["x"] > label["x"], (
        label,
        value,
    )


class _Node:
    """Stands in for the old page's <html> element: is_enabled answers or raises."""

    def __init__(self, error: Exception | None) -> None:
        self.error = error

    def is_enabled(self) -> bool:
        if self.error is not None:
            raise self.error
        return True


@pytest.mark.parametrize(
    ("error", "replaced"),
    [
        (None, False),
        (StaleElementReferenceException("stale element reference"), True),
        (
            WebDriverException(
                'unknown error: unhandled inspector error: {"code":-32000,'
                '"message":"Node with given id does not belong to the document"}'
            ),
            True,
        ),
    ],
)
def test_gone_reads_both_ways_of_saying_the_page_was_replaced(
    error: Exception | None, replaced: bool
) -> None:
    check = gone(_Node(error))  # type: ignore[arg-type]
    assert check(None) is replaced  # type: ignore[arg-type]


def test_gone_lets_any_other_driver_error_through() -> None:
    check = gone(_Node(WebDriverException("chrome not reachable")))  # type: ignore[arg-type]
    with pytest.raises(WebDriverException, match="chrome not reachable"):
        check(None)  # type: ignore[arg-type]
