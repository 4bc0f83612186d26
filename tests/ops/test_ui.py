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
from tests.conftest import KEY, OTHER_KEY, config_text
from tests.ops.gateway_process import poll
from tests.ops.test_controlplane import ADMIN_KEY, admin, chat

CHROMIUM = "/usr/bin/chromium"


# an alias with its own price and the exact cache on: acme asks it the same question three times
PRICED = """  - name: priced
    cache: {enabled: true}
    deployments:
      - provider: openai-compatible
        model: fake-model
        api_base: %s/v1
        api_key: x
        price: {input: 2000, output: 8000}
"""
CACHED_ASK = [{"role": "user", "content": "what does the cache save"}]


@pytest.fixture
def seeded(upstream, start_gateway, tmp_path):
    text = (
        config_text(upstream[0].url, PRICED % upstream[0].url)
        + f"""
admin:
  keys: ["{hash_key(ADMIN_KEY)}"]
request_log:
  path: {tmp_path / "requests.db"}
  flush_interval_s: 0.05
"""
    )
    upstream[1].api_key = None  # the priced deployment uses its own key
    gateway = start_gateway(text, clock=ManualClock())
    for key, model, times in ((KEY, "chat", 3), (OTHER_KEY, "chat", 2)):
        for _ in range(times):
            assert chat(gateway, key, model) == 200
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=OTHER_KEY, max_retries=0) as client:
        client.embeddings.create(model="embed", input="seed")
    assert chat(gateway, KEY, "private") == 404
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0) as client:
        for _ in range(3):
            client.chat.completions.create(model="priced", temperature=0, messages=CACHED_ASK)  # type: ignore[arg-type]
    poll(lambda: len(admin(gateway, "GET", "/admin/requests").json()["data"]) == 10, "ten logged requests")
    return gateway


@pytest.fixture
def browser() -> Iterator:
    if shutil.which(CHROMIUM) is None:
        raise RuntimeError("chromium is not installed (apt-get install chromium; .ci/run does it)")
    with sync_playwright() as driver:
        # --no-sandbox: CI runs tests as root, where Chromium's sandbox refuses to start
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


def log_in(browser, gateway, key: str):
    page = browser.new_page()
    page.goto(gateway.url + "/ui")
    page.fill("#key", key)
    page.click("#login-button")
    page.wait_for_selector("body[data-loaded=true]", timeout=20000)
    return page


def field(page, table: str, row: str, name: str) -> str:
    return page.locator(f"{table} tr{row} [data-field={name}]").inner_text()


def test_an_admin_reads_the_seeded_numbers_and_manages_keys(seeded, browser, tmp_path):
    page = log_in(browser, seeded, ADMIN_KEY)
    page.screenshot(path=str(tmp_path / "admin.png"), full_page=True)
    assert page.inner_text("#error") == ""
    usage = admin(seeded, "GET", "/admin/usage", params={"group_by": "model"}).json()["data"]
    assert {(r["tenant"], r["model"]) for r in usage} == {
        ("acme", "chat"),
        ("acme", "priced"),
        ("globex", "chat"),
        ("globex", "embed"),
    }
    assert page.locator("#usage tbody tr").count() == len(usage)
    for r in usage:
        row = f'[data-tenant="{r["tenant"]}"][data-model="{r["model"]}"]'
        assert field(page, "#usage", row, "requests") == str(r["requests"])
        assert field(page, "#usage", row, "prompt_tokens") == str(r["prompt_tokens"])
        assert field(page, "#usage", row, "completion_tokens") == str(r["completion_tokens"])
        assert float(field(page, "#usage", row, "cost_usd")) == pytest.approx(r["cost_usd"], abs=1e-6)
    assert field(page, "#usage", '[data-tenant="acme"][data-model="chat"]', "requests") == "3"
    # dollars saved by the cache: the two hits each saved what the first (priced) answer cost
    [first] = admin(seeded, "GET", "/admin/requests", params={"alias": "priced"}).json()["data"][-1:]
    assert first["cache"] == "miss" and first["cost_usd"] > 0
    priced = [r for r in admin(seeded, "GET", "/admin/requests", params={"alias": "priced"}).json()["data"]]
    assert sorted(r["cache"] for r in priced) == ["hit-exact", "hit-exact", "miss"]
    saved = 2 * first["cost_usd"]
    assert field(page, "#cache", '[data-tenant="acme"]', "cache_hits") == "2"
    assert float(field(page, "#cache", '[data-tenant="acme"]', "saved_usd")) == pytest.approx(saved, abs=1e-6)
    assert float(field(page, "#cache", '[data-tenant="globex"]', "saved_usd")) == 0
    assert page.inner_text("#saved-total") == f"${saved:.6f}"
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
    assert [r["action"] for r in admin(seeded, "GET", "/admin/control-plane/changes").json()["data"]] == [
        "key.revoke",
        "key.create",
    ]


def test_metrics_count_the_dollars_the_cache_saved(seeded):
    """/metrics: gateway_cache_saved_usd_total per tenant, what the Grafana panel and the page read."""
    [miss] = [
        r
        for r in admin(seeded, "GET", "/admin/requests", params={"alias": "priced"}).json()["data"]
        if r["cache"] == "miss"
    ]

    def saved() -> float:  # the process's counter: earlier gateways in this test process added to it too
        text = httpx.get(seeded.url + "/metrics", timeout=10).text
        [line] = [
            x for x in text.splitlines() if x.startswith('gateway_cache_saved_usd_total{tenant="acme"}')
        ]
        return float(line.split()[-1])

    before = saved()
    with openai.OpenAI(base_url=seeded.url + "/v1", api_key=KEY, max_retries=0) as client:
        hit = client.chat.completions.with_raw_response.create(
            model="priced",
            temperature=0,
            messages=CACHED_ASK,  # type: ignore[arg-type]
        )
    assert hit.headers["x-cache"] == "hit-exact"
    assert saved() - before == pytest.approx(miss["cost_usd"], rel=1e-9)
    # the same figures through the admin API the page reads, and a tenant key sees its own tenant only
    poll(lambda: len(admin(seeded, "GET", "/admin/requests").json()["data"]) == 11, "the hit logged")
    savings = admin(seeded, "GET", "/admin/cache/savings").json()
    assert {r["tenant"]: r["saved_usd"] for r in savings["data"]}["acme"] == pytest.approx(
        3 * miss["cost_usd"]
    )
    assert [r["tenant"] for r in admin(seeded, "GET", "/admin/cache/savings", KEY).json()["data"]] == ["acme"]


def test_a_tenant_key_sees_its_own_tenant_only(seeded, browser, tmp_path):
    page = log_in(browser, seeded, KEY)
    page.screenshot(path=str(tmp_path / "tenant.png"), full_page=True)
    assert page.inner_text("#who") == "tenant acme"
    tenants = {
        page.locator("#usage tbody tr").nth(i).get_attribute("data-tenant")
        for i in range(page.locator("#usage tbody tr").count())
    }
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
