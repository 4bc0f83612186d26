"""The /ui dashboard in a real browser (Debian's chromium driven by Playwright): an admin logs in, reads the
numbers of a seeded workload (checked against /admin/usage and /admin/requests), creates a key that a real
client then uses, and revokes it; a tenant key sees its own tenant only. Screenshots go to pytest's tmp_path."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import httpx
import openai
import pytest
from playwright.sync_api import sync_playwright

from gateway.auth import hash_key
from policies.clock import ManualClock
from tests.conftest import KEY, OTHER_KEY
from tests.ops.gateway_process import poll
from tests.ops.test_controlplane import ADMIN_KEY, admin, admin_config, chat

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def seeded(upstream, start_gateway, tmp_path):  # type: ignore[no-untyped-def]
    gateway = start_gateway(admin_config(upstream[0].url).replace("request_log:\n  enabled: false", f"""request_log:
  path: {tmp_path / "requests.db"}
  flush_interval_s: 0.05"""), clock=ManualClock())
    for key, model, times in ((KEY, "chat", 3), (OTHER_KEY, "chat", 2)):
        for _ in range(times):
            assert chat(gateway, key, model) == 200
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=OTHER_KEY, max_retries=0) as client:
        client.embeddings.create(model="embed", input="seed")
    assert chat(gateway, KEY, "private") == 404
    poll(lambda: len(admin(gateway, "GET", "/admin/requests").json()["data"]) == 7, "seven logged requests")
    return gateway


@pytest.fixture
def browser() -> Iterator:  # type: ignore[type-arg]
    if shutil.which(CHROMIUM) is None:
        raise RuntimeError("chromium is not installed (apt-get install chromium; .ci/run does it)")
    with sync_playwright() as driver:
        # --no-sandbox: CI runs tests as root, where Chromium's sandbox refuses to start
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


def log_in(browser, gateway, key: str):  # type: ignore[no-untyped-def]
    page = browser.new_page()
    page.goto(gateway.url + "/ui")
    page.fill("#key", key)
    page.click("#login-button")
    page.wait_for_selector("body[data-loaded=true]", timeout=20000)
    return page


def field(page, table: str, row: str, name: str) -> str:  # type: ignore[no-untyped-def]
    return page.locator(f"{table} tr{row} [data-field={name}]").inner_text()


def test_an_admin_reads_the_seeded_numbers_and_manages_keys(seeded, browser, tmp_path):
    page = log_in(browser, seeded, ADMIN_KEY)
    page.screenshot(path=str(tmp_path / "admin.png"), full_page=True)
    assert page.inner_text("#error") == ""
    usage = admin(seeded, "GET", "/admin/usage", params={"group_by": "model"}).json()["data"]
    assert {(r["tenant"], r["model"]) for r in usage} == {("acme", "chat"), ("globex", "chat"),
                                                         ("globex", "embed")}
    assert page.locator("#usage tbody tr").count() == len(usage)
    for r in usage:
        row = f'[data-tenant="{r["tenant"]}"][data-model="{r["model"]}"]'
        assert field(page, "#usage", row, "requests") == str(r["requests"])
        assert field(page, "#usage", row, "prompt_tokens") == str(r["prompt_tokens"])
        assert field(page, "#usage", row, "completion_tokens") == str(r["completion_tokens"])
        assert float(field(page, "#usage", row, "cost_usd")) == pytest.approx(r["cost_usd"], abs=1e-6)
    assert field(page, "#usage", '[data-tenant="acme"][data-model="chat"]', "requests") == "3"
    # latency percentiles over the logged requests, per alias
    logged = admin(seeded, "GET", "/admin/requests", params={"alias": "chat"}).json()["data"]
    latencies = sorted(r["latency_ms"] for r in logged)
    assert field(page, "#latency", '[data-alias="chat"]', "requests") == "5"
    assert field(page, "#latency", '[data-alias="chat"]', "p50") == f"{latencies[2]:.1f}"
    assert field(page, "#latency", '[data-alias="chat"]', "p99") == f"{latencies[-1]:.1f}"
    # deployments and their breakers
    assert field(page, "#deployments", '[data-alias="chat"]', "breaker") == "closed"
    # recent requests, filtered by status
    page.fill("#filters [name=status]", "404")
    page.click("#filters button")
    page.wait_for_function("document.querySelectorAll('#requests tbody tr').length === 1")
    assert field(page, "#requests", "", "status") == "404"
    # a key made in the page works for a real client; revoked in the page, it stops working
    page.fill("#create-key [name=tenant]", "globex")
    page.fill("#create-key [name=name]", "from-the-ui")
    page.click("#create-key button")
    page.wait_for_selector("#newkey:not(.hidden)")
    key = page.inner_text("#newkey")
    key_id = hash_key(key)[7:19]
    page.wait_for_selector(f'#keys tr[data-id="{key_id}"]')
    page.screenshot(path=str(tmp_path / "key-created.png"), full_page=True)
    assert chat(seeded, key) == 200
    page.click(f'#keys tr[data-id="{key_id}"] button.revoke')
    page.wait_for_selector(f'#keys tr[data-id="{key_id}"]', state="detached")
    assert chat(seeded, key) == 401
    assert [r["action"] for r in admin(seeded, "GET", "/admin/control-plane/changes").json()["data"]] == ["key.revoke", "key.create"]


def test_a_tenant_key_sees_its_own_tenant_only(seeded, browser, tmp_path):
    page = log_in(browser, seeded, KEY)
    page.screenshot(path=str(tmp_path / "tenant.png"), full_page=True)
    assert page.inner_text("#who") == "tenant acme"
    tenants = {page.locator("#usage tbody tr").nth(i).get_attribute("data-tenant")
               for i in range(page.locator("#usage tbody tr").count())}
    assert tenants == {"acme"}
    assert {t for t in page.locator("#requests tbody tr td:nth-child(2)").all_inner_texts()} == {"acme"}
    assert not page.is_visible("#deployments-section") and not page.is_visible("#create-key")
    assert page.locator("button.revoke").count() == 0


def test_a_wrong_key_is_refused_at_login(seeded, browser):
    page = browser.new_page()
    page.goto(seeded.url + "/ui")
    page.fill("#key", "gw-not-a-key")
    page.click("#login-button")
    page.wait_for_function("document.querySelector('#login-error').textContent !== ''")
    assert "Incorrect API key" in page.inner_text("#login-error")
    assert not page.is_visible("#main")
    assert httpx.get(seeded.url + "/ui/nothing.js").status_code == 404
