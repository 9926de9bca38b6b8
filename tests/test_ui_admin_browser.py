"""The admin pages and the sign-in page in a real browser (Playwright driving
``/usr/bin/chromium`` against a real ``ferroflow server start`` on 127.0.0.1; the
fixtures are :mod:`test_ui_browser`'s). Each page is checked at 1280 px and at a phone's
width (390 px) for horizontal overflow and saved as a screenshot under the test's temp
dir."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable

from playwright.sync_api import Browser, Page, expect

import test_ui_browser
from ferroflow.server import auth
from ferroflow.server import secrets as server_secrets
from ferroflow.server.database import open_database
from ferroflow.store import store_path
from test_ui_browser import Server

# test_ui_browser's fixtures: a real server, Chromium, and screenshots in tmp_path.
server = test_ui_browser.server
browser = test_ui_browser.browser
shoot = test_ui_browser.shoot

WIDTHS = {"wide": 1280, "phone": 390}


def _api(url: str, token: str) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            json.loads(r.read())
            return int(r.status)
    except urllib.error.HTTPError as err:
        return err.code


def _fits(page: Page) -> None:
    width = page.viewport_size["width"] if page.viewport_size else 0
    scroll = page.evaluate("document.documentElement.scrollWidth")
    assert scroll <= width, f"{page.url} is {scroll} px wide in a {width} px window"


def test_sign_in_then_manage_tokens_secrets_and_read_the_audit_log(
    server: Server, browser: Browser, shoot: Callable[[Page, str], None]
) -> None:
    db = open_database(f"sqlite:///{store_path()}")
    try:
        admin_token = str(auth.create_token(db, "root", "admin")["token"])
    finally:
        db.close()
    context = browser.new_context(viewport={"width": WIDTHS["wide"], "height": 900})
    page = context.new_page()

    # A page needs signing in now; a bad token is a readable error, a good one goes on.
    page.goto(server.url + "/tokens")
    expect(page.locator("h1")).to_have_text("Sign in to ferroflow")
    assert "/signin?next=/tokens" in page.url
    page.fill("#signin-token", "ff_" + "x" * 43)
    page.click("#signin-submit")
    expect(page.locator("#signin-error")).to_have_text("Cannot sign in: unknown API token.")
    # Styled by the UI's sheet like every page (it loads before signing in).
    header = page.locator("header.top")
    expect(header).to_have_css("background-color", "rgb(36, 41, 47)")
    expect(page.locator("#signin-submit")).to_have_css("background-color", "rgb(11, 92, 173)")
    _fits(page)
    shoot(page, "signin-bad-token")
    page.fill("#signin-token", admin_token)
    page.click("#signin-submit")
    expect(page.locator("h1")).to_have_text("API tokens")
    assert page.url == server.url + "/tokens"
    expect(page.locator("header nav")).to_contain_text("Audit")

    # Make a token: shown once, with the warning; it works; then revoke it.
    page.fill("#token-name", "deployer")
    page.select_option("#token-role", "user")
    page.fill("#token-expires", "7d")
    page.click("#token-create")
    expect(page.locator("#new-token")).to_contain_text("cannot be shown again")
    new = page.locator("#new-token-value").inner_text().strip()
    assert new.startswith("ff_")
    expect(page.locator('#tokens tr[data-token="deployer"]')).to_contain_text("active")
    shoot(page, "tokens-new")
    assert _api(server.url + "/api/runs", new) == 200
    page.goto(server.url + "/tokens")
    expect(page.locator("#new-token")).to_have_count(0)
    assert new not in page.content()
    page.locator('#tokens tr[data-token="deployer"] button').click()
    expect(page.locator(".notice")).to_contain_text("token 'deployer' revoked")
    expect(page.locator('#tokens tr[data-token="deployer"]')).to_contain_text("revoked")
    assert _api(server.url + "/api/runs", new) == 401
    shoot(page, "tokens")

    # A bad name, then a good secret; its value is nowhere on the page; remove it.
    page.goto(server.url + "/secrets")
    page.fill("#secret-name", "9BAD")
    page.fill("#secret-value", "the-value-1")
    page.click("#secret-set")
    expect(page.locator("#secret-error")).to_contain_text("is not valid")
    expect(page.locator("#secret-value")).to_have_value("")
    page.fill("#secret-name", "API_PASSWORD")
    page.fill("#secret-value", "the-value-1")
    page.click("#secret-set")
    expect(page.locator(".notice")).to_have_text("secret API_PASSWORD set")
    expect(page.locator('#secrets tr[data-secret="API_PASSWORD"]')).to_be_visible()
    assert "the-value-1" not in page.content()
    shoot(page, "secrets")
    db = open_database(f"sqlite:///{store_path()}")
    try:
        assert server_secrets.read_secret(db, "API_PASSWORD") == "the-value-1"
    finally:
        db.close()
    page.locator('#secrets tr[data-secret="API_PASSWORD"] button').click()
    expect(page.locator(".notice")).to_have_text("secret API_PASSWORD removed")
    expect(page.locator("#secrets")).to_contain_text("No secrets.")
    page.fill("#secret-name", "KEPT")
    page.fill("#secret-value", "kept-value")
    page.click("#secret-set")
    expect(page.locator('#secrets tr[data-secret="KEPT"]')).to_be_visible()

    # The audit log: what was just done, newest first; filter by clicking an action.
    page.goto(server.url + "/audit")
    rows = page.locator("#audit tr[data-seq]")
    expect(rows.first).to_contain_text("set_secret")
    expect(rows.first).to_contain_text("KEPT")
    expect(rows.first).to_contain_text("root")
    expect(page.locator("#audit")).to_contain_text("revoke_api_key")
    shoot(page, "audit")
    page.locator("#audit").get_by_role("link", name="revoke_api_key").click()
    expect(rows).to_have_count(1)
    assert "action=revoke_api_key" in page.url  # a link to share
    expect(page.locator("#audit-action")).to_have_value("revoke_api_key")
    shoot(page, "audit-filtered")

    # Every page fits the window, wide and on a phone.
    for label, width in WIDTHS.items():
        page.set_viewport_size({"width": width, "height": 900})
        for path in ("/tokens", "/secrets", "/audit", "/audit?action=revoke_api_key"):
            page.goto(server.url + path)
            expect(page.locator("h1")).to_be_visible()
            _fits(page)
            shoot(page, f"{label}{path.replace('/', '-').replace('?', '-').replace('=', '-')}")
    # And the sign-in page, on a phone.
    phone = browser.new_page(viewport={"width": WIDTHS["phone"], "height": 844})
    phone.goto(server.url + "/signin")
    expect(phone.locator("#signin-token")).to_be_visible()
    _fits(phone)
    shoot(phone, "signin-phone")
    phone.close()
    context.close()


def test_a_non_admin_sees_no_admin_links_and_a_readable_403(
    server: Server, browser: Browser, shoot: Callable[[Page, str], None]
) -> None:
    db = open_database(f"sqlite:///{store_path()}")
    try:
        token = str(auth.create_token(db, "viewer", "read_only")["token"])
    finally:
        db.close()
    page = browser.new_page(viewport={"width": WIDTHS["phone"], "height": 844})
    page.goto(server.url + "/signin")
    page.fill("#signin-token", token)
    page.click("#signin-submit")
    expect(page.locator("h1")).to_have_text("Dashboard")
    expect(page.locator("header nav")).not_to_contain_text("Tokens")
    expect(page.locator("header")).to_contain_text("viewer (read_only)")
    page.goto(server.url + "/secrets")
    expect(page.locator("h1")).to_have_text("403")
    expect(page.locator(".error")).to_contain_text("is not an admin")
    _fits(page)
    shoot(page, "secrets-forbidden-phone")
