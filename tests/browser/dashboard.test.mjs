// The dashboard in a real browser (Debian's headless Chromium, driven by
// playwright-core), against the running demo: the table fills, numbers move
// between slides, an IP's history opens on click, hostile log lines render
// inert, polling takes over without EventSource. Screenshots (desktop and
// phone width) go to test-artifacts/.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdirSync, openSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const artifacts = join(root, "test-artifacts");
const bin = process.env.IPSTATS_BIN || join(root, "target", "debug", "ipstats");
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
mkdirSync(artifacts, { recursive: true });

let service;
let base;
let browser;

function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
    server.on("error", reject);
  });
}

/** Polls `probe` until it returns a truthy value or the deadline passes. */
async function waitFor(what, probe, ms = 30_000) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    try {
      const value = await probe();
      if (value) return value;
    } catch (error) {
      last = error;
    }
    await new Promise((r) => setTimeout(r, 100)); // polling period, bounded by the deadline
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ""}`);
}

async function status() {
  const response = await fetch(`${base}/api/v1/status`);
  return response.json();
}

before(async () => {
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  const log = openSync(join(artifacts, "browser-ipstats.log"), "w");
  // Rules the demo's traffic breaks: its busiest address, and the /24 a
  // scraper rotates over.
  const rules = join(artifacts, "browser-rules.toml");
  writeFileSync(rules, [
    '[[rule]]\nname = "hot-ip"\nkey = "ip"\nwindow = "10s"\nrequests = 200\n',
    '[[rule]]\nname = "rotating-24"\nkey = "v4/24"\nwindow = "10s"\nshare = 0.08\nmin_total = 100\nblock = true\n',
    '[[rule]]\nname = "big-as"\nkey = "asn"\nwindow = "10s"\nshare = 0.2\nmin_total = 100\n',
  ].join("\n"));
  // Databases of owners over the demo's addresses (scripts/make-mmdb.py,
  // the test venv's mmdb-writer): four ASes, three countries.
  const python = join(root, ".cache", "venv", "bin", "python");
  const asnDb = join(artifacts, "browser-asn.mmdb");
  const countryDb = join(artifacts, "browser-country.mmdb");
  for (const [kind, out, entries] of [
    ["asn", asnDb, ["0.0.0.0/2=64500:FIRST-QUARTER", "64.0.0.0/2=64501:SECOND-QUARTER",
      "128.0.0.0/1=64502:UPPER-HALF", "2000::/3=64510:V6-GLOBAL"]],
    ["country", countryDb, ["0.0.0.0/1=DE", "128.0.0.0/2=FR", "2000::/3=NL"]],
  ]) {
    const made = spawnSync(python, [join(root, "scripts", "make-mmdb.py"), kind, out, ...entries], { stdio: "inherit" });
    assert.equal(made.status, 0, `make-mmdb.py ${kind}`);
  }
  service = spawn(bin, ["--listen", `127.0.0.1:${port}`, "--batch", "200ms", "--slide", "1s", "--window", "60s",
    "--rules", rules, "--asn-db", asnDb, "--country-db", countryDb], {
    stdio: ["ignore", log, log],
    env: Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("IPSTATS_"))),
  });
  await waitFor("ipstats ready", async () => (await fetch(`${base}/readyz`)).ok);
  browser = await chromium.launch({
    executablePath: chromiumPath,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"],
  });
});

after(async () => {
  await browser?.close();
  service?.kill("SIGTERM");
});

/** A page that records console errors, CSP violations and dialogs. */
async function open(path = "/", viewport = { width: 1280, height: 900 }, init) {
  const page = await browser.newPage({ viewport });
  const problems = [];
  page.on("console", (m) => { if (m.type() === "error") problems.push(m.text()); });
  page.on("pageerror", (e) => problems.push(e.message));
  page.on("dialog", (d) => { problems.push(`dialog: ${d.message()}`); d.dismiss(); });
  if (init) await page.addInitScript(init);
  await page.goto(base + path);
  return { page, problems };
}

async function rows(page) {
  return page.locator("#top tbody tr").count();
}

test("the top table fills and the feed streams", async () => {
  const { page, problems } = await open("/?n=25");
  await waitFor("25 rows", async () => (await rows(page)) === 25);
  assert.equal(await page.locator("#feed").textContent(), "streaming");
  assert.equal(await page.locator("#demo-banner").isVisible(), true, "demo data is labelled");
  // Two badges, two words: the service's health, and how the page is fed.
  assert.match(await page.locator("#health").textContent(), /healthy/);
  assert.ok((await page.locator("#top-chart rect").count()) >= 10, "bar chart drawn");
  // Event time: how fresh the data is, next to the window.
  await waitFor("the data's freshness", async () =>
    /^data up to .+, [\d.]+ s behind$/.test(await page.locator("#freshness").textContent()));
  await page.screenshot({ path: join(artifacts, "dashboard-desktop.png"), fullPage: true });
  assert.deepEqual(problems, []);
  await page.close();
});

test("numbers change between two slides", async () => {
  const { page, problems } = await open("/");
  await waitFor("a first total", async () => /\d/.test(await page.locator("#total").textContent()));
  const first = await page.locator("#rate").textContent() + "|" + await page.locator("#updated").textContent();
  await waitFor("the next slide", async () =>
    (await page.locator("#rate").textContent()) + "|" + (await page.locator("#updated").textContent()) !== first);
  await waitFor("sparklines", async () => (await page.locator("#spark-rate polyline").count()) === 1);
  assert.deepEqual(problems, []);
  await page.close();
});

test("clicking an IP opens its per-pane history", async () => {
  const { page, problems } = await open("/");
  await waitFor("rows", async () => (await rows(page)) > 0);
  const button = page.locator("#top tbody button.ip").first();
  const ip = await button.textContent();
  await button.click();
  await waitFor("the history panel", async () => page.locator("#ip-history").isVisible());
  assert.equal(await page.locator("#ip-history-ip").textContent(), ip);
  await waitFor("history bars", async () => (await page.locator("#ip-history-chart rect").count()) > 0);
  assert.ok(page.url().includes(`ip=${encodeURIComponent(ip)}`), "the URL keeps the choice");
  assert.deepEqual(problems, []);
  await page.close();
});

test("n and theme are kept in the URL and applied", async () => {
  const { page, problems } = await open("/?theme=dark&n=50");
  assert.equal(await page.evaluate(() => document.documentElement.dataset.theme), "dark");
  await waitFor("50 rows", async () => (await rows(page)) === 50);
  await page.selectOption("#theme", "light");
  assert.equal(await page.evaluate(() => document.documentElement.dataset.theme), "light");
  assert.ok(page.url().includes("theme=light") && page.url().includes("n=50"), page.url());
  assert.deepEqual(problems, []);
  await page.close();
});

test("without EventSource the page polls", async () => {
  const { page, problems } = await open("/", undefined, () => { delete window.EventSource; });
  await waitFor("rows by polling", async () => (await rows(page)) > 0);
  assert.equal(await page.locator("#feed").textContent(), "polling");
  assert.deepEqual(problems, []);
  await page.close();
});

test("hostile log lines render inert", async () => {
  const brokers = (await status()).kafka.brokers.match(/\((.*)\)/)[1];
  const marker = "198.51.100.77";
  const hostile = [
    `<script>window.__xss = 1</script>`,
    `{"client_real_ip":"<img src=x onerror=\\"window.__xss=1\\">","request":"GET /"}`,
    `{"client_real_ip":"\\"><script>window.__xss=1</script>"}`,
    `{"client_real_ip":"${marker}","time_local":"${new Date().toISOString()}","request":"<script>window.__xss=1</script>","http_user_agent":"\\"><img src=x onerror=window.__xss=1>","http_referer":"javascript:window.__xss=1"}`,
  ];
  // Many copies of the valid one, so that its IP reaches the top table.
  const lines = [...hostile.slice(0, 3), ...Array(3000).fill(hostile[3])].join("\n") + "\n";
  const before = (await status()).skipped;
  const kcat = spawnSync("kcat", ["-P", "-b", brokers, "-t", "access-log"], { input: lines });
  assert.equal(kcat.status, 0, String(kcat.stderr));
  await waitFor("the hostile lines skipped", async () => {
    const after = (await status()).skipped;
    return after.invalid_ip >= before.invalid_ip + 2 && after.not_json >= before.not_json + 1;
  });
  const { page, problems } = await open("/?n=100");
  await waitFor("the marker IP in the table", async () =>
    (await page.locator("#top tbody button.ip", { hasText: marker }).count()) === 1);
  assert.equal(await page.evaluate(() => window.__xss), undefined, "no injected script ran");
  assert.equal(await page.locator("img").count(), 0, "no injected element exists");
  assert.equal(await page.locator("script").count(), 1, "only the page's own script");
  assert.deepEqual(problems, []);
  await page.close();
});

test("another window, networks, and one network's members", async () => {
  const { page, problems } = await open("/?n=25&window=10s&group=24");
  assert.equal(await page.locator("#range").inputValue(), "10s", "the window comes from the URL");
  await waitFor("the top networks", async () =>
    (await page.locator("#top-title").textContent()) === "Top networks"
    && (await page.locator("#top tbody button.net").count()) > 0);
  assert.equal(await page.locator("#window-length").textContent(), "10 s");
  assert.ok(await page.locator('#range option[value="1h"]').isDisabled(), "beyond --retention");
  const first = page.locator("#top tbody button.net").first();
  const network = await first.textContent();
  assert.match(network, /^\d+\.\d+\.\d+\.0\/24$|\/128$/);
  await first.click();
  await waitFor("the network's members", async () =>
    (await page.locator("#net-members-net").textContent()) === network
    && (await page.locator("#net-members-table tbody tr").count()) > 0);
  assert.match(page.url(), /network=/, "the choice is kept in the URL");
  await page.screenshot({ path: join(artifacts, "dashboard-networks.png"), fullPage: true });
  assert.deepEqual(problems, []);
  await page.close();
});

test("a window the server does not keep is said, and the service stays healthy", async () => {
  // 1 h is past --retention: the server answers 404 naming the window.
  const { page, problems } = await open("/?n=5&window=1h");
  await waitFor("the error banner", async () => await page.locator("#error-banner").isVisible()
    && /Cannot load that window: .*404/.test(await page.locator("#error-banner").textContent()));
  // Still there after the next render: the render that follows a refused
  // question does not hide what it said.
  const rendered = await page.locator("#updated").textContent();
  await waitFor("another render", async () => (await page.locator("#updated").textContent()) !== rendered);
  assert.equal(await page.locator("#error-banner").isVisible(), true);
  assert.match(await page.locator("#health").textContent(), /healthy/, "ipstats answered: no outage");
  assert.ok(problems.every((p) => /404/.test(p)), problems.join("\n"));
  await page.close();
});

test("firing alerts are listed at the top and their rows are marked", async () => {
  const { page, problems } = await open("/?n=25");
  await waitFor("the alerts panel", async () => await page.locator("#alerts").isVisible()
    && /rotating-24\s+198\.51\.100\.0\/24/.test(await page.locator("#alerts-firing").textContent()));
  assert.match(await page.locator("#alerts-firing").textContent(), /hot-ip/);
  await waitFor("the busiest address marked", async () =>
    (await page.locator("#top tbody tr.flagged").count()) > 0);
  assert.match(await page.locator("#top tbody tr.flagged").first().textContent(), /hot-ip/);
  // Grouped by /24: the scraper's network is marked.
  await page.selectOption("#group", "24");
  await waitFor("the /24 marked", async () =>
    /198\.51\.100\.0\/24/.test(await page.locator("#top tbody tr.flagged").allTextContents().then((t) => t.join(" "))));
  await page.screenshot({ path: join(artifacts, "dashboard-alerts.png"), fullPage: true });
  assert.deepEqual(problems, []);
  await page.close();
});

test("who is behind the traffic: ASes with their organisations, countries, one AS's members", async () => {
  const { page, problems } = await open("/?n=10");
  await waitFor("the owners tables", async () => await page.locator("#owners").isVisible()
    && (await page.locator("#owners-asn tbody tr").count()) > 0
    && (await page.locator("#owners-country tbody tr").count()) > 0);
  const orgs = (await page.locator("#owners-asn tbody").textContent());
  assert.match(orgs, /AS6450[012]/);
  assert.match(orgs, /QUARTER|UPPER-HALF/);
  assert.match(await page.locator("#owners-country tbody").textContent(), /DE|FR|NL/);
  // The rule by AS marks its row.
  await waitFor("an AS marked by its rule", async () =>
    /big-as/.test(await page.locator("#owners-asn tbody tr.flagged").allTextContents().then((t) => t.join(" "))));
  // The same numbers as the API's.
  const api = await (await fetch(`${base}/api/v1/top?group=asn&n=10`)).json();
  assert.ok(api.top.length > 0);
  const first = page.locator("#owners-asn tbody button.asn").first();
  const asn = await first.getAttribute("data-asn");
  await first.click();
  await waitFor("the AS's members", async () =>
    (await page.locator("#net-members-net").textContent()).startsWith(`AS${asn}`)
    && (await page.locator("#net-members-table tbody tr").count()) > 0);
  assert.match(page.url(), new RegExp(`asn=${asn}`), "the choice is kept in the URL");
  await page.screenshot({ path: join(artifacts, "dashboard-owners.png"), fullPage: true });
  assert.deepEqual(problems, []);
  await page.close();
});

test("a phone-width screen shows the same dashboard", async () => {
  const { page, problems } = await open("/", { width: 390, height: 844 });
  await waitFor("rows", async () => (await rows(page)) > 0);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, `no sideways scrolling of the page (${overflow}px)`);
  await page.screenshot({ path: join(artifacts, "dashboard-phone.png"), fullPage: true });
  assert.deepEqual(problems, []);
  await page.close();
});
